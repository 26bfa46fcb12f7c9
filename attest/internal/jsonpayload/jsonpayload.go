// Package jsonpayload decodes attestation payloads: one strict JSON object,
// size-bounded, with errors that never quote the input (payloads carry
// tokens).
package jsonpayload

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Decode decodes exactly one JSON object from b into v. Unknown fields,
// trailing data, a non-object and inputs over max bytes are errors.
func Decode(b []byte, max int, v any) error {
	if len(b) > max {
		return fmt.Errorf("%d bytes, more than the limit of %d", len(b), max)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return errors.New("empty")
	}
	if b[0] != '{' {
		return errors.New("not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return describe(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// describe turns a decoding error into words that do not quote the input.
func describe(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var b64 base64.CorruptInputError
	switch {
	case errors.As(err, &b64):
		return fmt.Errorf("invalid base64 at byte %d of a field", int64(b64))
	case errors.As(err, &syn):
		return fmt.Errorf("malformed JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		if typ.Field != "" {
			return fmt.Errorf("field %q: want a JSON %s", typ.Field, jsonType(typ.Type.Kind().String()))
		}
		return errors.New("wrong JSON type")
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return errors.New("truncated JSON")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		// The name is not repeated: it comes from the input.
		return errors.New("unknown field")
	}
	return errors.New("malformed JSON")
}

func jsonType(goKind string) string {
	switch goKind {
	case "string":
		return "string"
	case "slice", "array":
		return "array"
	case "struct", "map", "ptr":
		return "object"
	case "bool":
		return "boolean"
	}
	return "number"
}
