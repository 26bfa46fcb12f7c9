package main

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// --since/--until: an RFC 3339 time or a duration ago; anything else is a
// usage error.
func FuzzParseTimeFlag(f *testing.F) {
	for _, s := range []string{"", "24h", "2026-12-01T00:00:00Z", "2026-12-01T00:00:00.5+08:00", "-1h", "soon", "1970-01-01T00:00:00Z", "9000000h"} {
		f.Add(s)
	}
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		got, err := parseTimeFlag("--since", v, now)
		var ue *usageError
		switch {
		case err != nil && !errors.As(err, &ue):
			t.Fatalf("%q: %v is not a usage error", v, err)
		case err != nil:
		case v == "" && !got.IsZero(), v != "" && got.Unix() <= 0:
			t.Fatalf("%q: %v", v, got)
		}
	})
}

func TestParseTimeFlag(t *testing.T) {
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Time{
		"":                     {},
		"24h":                  now.Add(-24 * time.Hour),
		"2026-11-01T10:00:00Z": time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC),
	} {
		if got, err := parseTimeFlag("--since", v, now); err != nil || !got.Equal(want) {
			t.Errorf("%q: %v %v, want %v", v, got, err, want)
		}
	}
	for _, v := range []string{"-1h", "0s", "yesterday", "2026-13-01T00:00:00Z"} {
		if _, err := parseTimeFlag("--since", v, now); err == nil {
			t.Errorf("%q accepted", v)
		}
	}
}

// The history settings: a malformed DSN is a usage error without the
// password; settings that need a database are refused without one; the
// DSN comes from the environment when no flag gives it.
func TestHistorySettings(t *testing.T) {
	a := &app{getenv: func(string) string { return "" }}
	for _, c := range []serverConfig{
		{PostgresDSN: "postgres://meshca:Hunter2-secret@db:notaport/meshca"},
		{PostgresDSN: "postgres://meshca@db/meshca", HistoryRetention: "forever"},
		{PostgresDSN: "postgres://meshca@db/meshca", ExportHold: "-1h"},
		{HistoryRetention: "8760h"},
		{PostgresCAFile: "ca.pem"},
		{PostgresDSN: "postgres://meshca@db/meshca?sslmode=disable", PostgresCAFile: "ca.pem"},
	} {
		_, err := a.history(&c)
		var ue *usageError
		if !errors.As(err, &ue) || strings.Contains(err.Error(), "Hunter2-secret") {
			t.Errorf("%+v: %v, want a usage error without the password", c, err)
		}
	}
	env := &app{getenv: func(k string) string {
		if k == envPostgresDSN {
			return "postgres://meshca:pw@127.0.0.1:5432/meshca?sslmode=disable"
		}
		return ""
	}}
	h, err := env.history(&serverConfig{HistoryRetention: "720h"})
	if err != nil || h.store == nil || h.retention != 720*time.Hour {
		t.Fatalf("from the environment: %+v %v", h, err)
	}
	defer h.store.Close()
	if got := h.store.String(); got != "meshca@127.0.0.1:5432/meshca" {
		t.Errorf("database named %q", got)
	}
	if h, err := a.history(&serverConfig{}); err != nil || h.store != nil {
		t.Errorf("no database: %+v %v", h, err)
	}
}
