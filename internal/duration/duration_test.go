package duration

import (
	"errors"
	"math"
	"testing"
	"time"
)

func TestSeconds(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want time.Duration
		ok   bool
	}{
		{0, 0, true},
		{600, 10 * time.Minute, true},
		{MaxSeconds, time.Duration(MaxSeconds) * time.Second, true},
		{MaxSeconds + 1, 0, false},
		{18446744674, 0, false}, // wraps to about 10 minutes when multiplied
		{18446747674, 0, false}, // wraps to about an hour
		{math.MaxInt64, 0, false},
		{-1, 0, false},
	} {
		got, err := Seconds("ttl_seconds", tc.n, 0, Max)
		var re *RangeError
		if tc.ok && (err != nil || got != tc.want) || !tc.ok && !errors.As(err, &re) {
			t.Errorf("Seconds(%d) = %v, %v; want %v, ok %v", tc.n, got, err, tc.want, tc.ok)
		}
	}
	if _, err := Seconds("ttl_seconds", 3600, time.Minute, 30*time.Minute); err == nil || err.Error() != "ttl_seconds 3600s is out of range: want 1m0s to 30m0s" {
		t.Errorf("Seconds above the range: %v", err)
	}
}
