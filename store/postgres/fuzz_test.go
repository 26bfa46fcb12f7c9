package postgres

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// A DSN that cannot be used is ErrMalformedDSN, and no error ever holds
// the password it was given.
func FuzzParseConfig(f *testing.F) {
	f.Add("u", "hunter22", "127.0.0.1:5432/db?sslmode=disable")
	f.Add("u", "hunter22", "host:notaport/db")
	f.Add("u", "p@ss:w/rd", "h/db?sslmode=bogus")
	f.Add("", "secret99", "[::1]:5432/db?sslmode=verify-full&sslrootcert=/nonexistent")
	f.Add("u", "hunter22", "h:5432/db?pool_max_conns=x")
	f.Fuzz(func(t *testing.T, user, password, rest string) {
		for _, dsn := range []string{
			"postgres://" + user + ":" + password + "@" + rest,
			fmt.Sprintf("user=%s password=%s %s", user, password, rest),
			fmt.Sprintf("user=%s password='%s' %s", user, strings.ReplaceAll(password, "'", ""), rest),
		} {
			_, err := ParseConfig(Config{DSN: dsn})
			if err == nil {
				continue
			}
			if !errors.Is(err, ErrMalformedDSN) {
				t.Fatalf("%q: %v is not ErrMalformedDSN", dsn, err)
			}
			// A password that also occurs in the rest of the DSN (or in the
			// message's fixed text) cannot be told apart; a distinctive one must not show.
			pw := strings.ReplaceAll(password, "'", "")
			if len(pw) >= 6 && !strings.Contains(user+rest, pw) && !strings.Contains("postgres: malformed DSN", pw) && strings.Contains(err.Error(), pw) {
				t.Fatalf("%q: the error %q holds the password", dsn, err)
			}
		}
	})
}

// Page tokens parse back to what a list wrote, and anything else is
// ErrBadPageToken.
func FuzzPageTokens(f *testing.F) {
	f.Add("12.3")
	f.Add("1733011200000000000.42.s1")
	f.Add("1.2.node.with.dots")
	f.Add("x.y")
	f.Add("")
	f.Fuzz(func(t *testing.T, tok string) {
		if idx, pos, err := ParseCertPageToken(tok); err == nil {
			again, pos2, err := ParseCertPageToken(fmt.Sprintf("%d.%d", idx, pos))
			if err != nil || again != idx || pos2 != pos || pos < 0 {
				t.Fatalf("cert token %q: %d.%d does not round-trip: %v", tok, idx, pos, err)
			}
		} else if !errors.Is(err, ErrBadPageToken) {
			t.Fatalf("cert token %q: %v", tok, err)
		}
		if ts, seq, server, err := ParseAuditPageToken(tok); err == nil {
			t2, seq2, server2, err := ParseAuditPageToken(fmt.Sprintf("%d.%d.%s", ts.UnixNano(), seq, server))
			if err != nil || !t2.Equal(ts) || seq2 != seq || server2 != server || server == "" {
				t.Fatalf("audit token %q does not round-trip: %v", tok, err)
			}
		} else if !errors.Is(err, ErrBadPageToken) {
			t.Fatalf("audit token %q: %v", tok, err)
		}
	})
}
