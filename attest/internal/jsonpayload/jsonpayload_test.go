package jsonpayload

import (
	"strings"
	"testing"
)

type doc struct {
	Token string   `json:"token"`
	Chain [][]byte `json:"chain"`
}

func TestDecode(t *testing.T) {
	const secret = "s3cr3t-t0ken"
	tests := []struct {
		name, in string
		max      int
		wantErr  string
	}{
		{name: "ok/object", in: `{"token":"` + secret + `"}`},
		{name: "ok/whitespace", in: " \n{\"token\":\"a\"}\n "},
		{name: "fail/too-large", in: `{"token":"` + secret + `"}`, max: 10, wantErr: "more than the limit of 10"},
		{name: "fail/empty", in: "  ", wantErr: "empty"},
		{name: "fail/array", in: `["` + secret + `"]`, wantErr: "not a JSON object"},
		{name: "fail/syntax", in: `{"token":"` + secret + `" "x"}`, wantErr: "malformed JSON at byte"},
		{name: "fail/type", in: `{"token":["` + secret + `"]}`, wantErr: `field "token": want a JSON string`},
		{name: "fail/unknown-field", in: `{"token":"a","` + secret + `":1}`, wantErr: "unknown field"},
		{name: "fail/trailing", in: `{"token":"a"} {"token":"` + secret + `"}`, wantErr: "trailing data"},
		{name: "fail/truncated", in: `{"token":"` + secret, wantErr: "JSON"},
		{name: "fail/base64", in: `{"chain":["` + secret + `!"]}`, wantErr: "invalid base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			max := tt.max
			if max == 0 {
				max = 1 << 10
			}
			var d doc
			err := Decode([]byte(tt.in), max, &d)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Decode(%q) = %v", tt.in, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Decode(%q) = %v, want an error containing %q", tt.in, err, tt.wantErr)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "s3cr") {
				t.Errorf("Decode(%q) error %q quotes the input", tt.in, err)
			}
		})
	}
}

// FuzzDecode checks that decoding never panics and that errors never
// quote the payload's string values.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"token":"abc"}`, `{"chain":["AAEC"]}`, `{"token":`, `[]`, `{"x":1}`, `{"token":"a"}{}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var d doc
		if err := Decode(b, 4<<10, &d); err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("error with a newline: %q", err)
		}
	})
}
