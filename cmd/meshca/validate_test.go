package main

import (
	"errors"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
)

func TestCheckTTL(t *testing.T) {
	for _, c := range []struct {
		ttl time.Duration
		ok  bool
	}{{time.Second, true}, {24 * time.Hour, true}, {0, false}, {-time.Hour, false}, {time.Millisecond, false}} {
		err := checkTTL(c.ttl)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ca.ErrInvalidTTL)) {
			t.Errorf("checkTTL(%s) = %v, want ok=%v", c.ttl, err, c.ok)
		}
	}
}
