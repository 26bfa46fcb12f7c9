// Package duration converts durations that come from the wire or from
// configuration, checking their range first: time.Duration(n) * time.Second
// wraps around silently above about 292 years, so 18446744674 seconds would
// become ten minutes.
package duration

import (
	"fmt"
	"math"
	"time"
)

// MaxSeconds is the largest whole number of seconds a time.Duration holds.
const MaxSeconds = math.MaxInt64 / int64(time.Second)

// RangeError is a duration outside its allowed range. It is a refusal of
// the request that carried it (internal/rpcerr: InvalidArgument).
type RangeError struct {
	// Field names the duration as the caller knows it, e.g. "ttl_seconds".
	Field string
	// Value is the duration as given, in Unit.
	Value int64
	Unit  string
	// Min and Max bound the allowed range.
	Min, Max time.Duration
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("%s %d%s is out of range: want %s to %s", e.Field, e.Value, e.Unit, e.Min, e.Max)
}

// InvalidArgument marks the error as a refusal for internal/rpcerr.
func (e *RangeError) InvalidArgument() bool { return true }

// Seconds returns n seconds as a Duration if it lies within [lo, hi], else
// a *RangeError naming field. hi is capped at what a Duration holds.
func Seconds(field string, n int64, lo, hi time.Duration) (time.Duration, error) {
	if n < 0 || n > MaxSeconds {
		return 0, &RangeError{Field: field, Value: n, Unit: "s", Min: lo, Max: hi}
	}
	d := time.Duration(n) * time.Second
	if d < lo || d > hi {
		return 0, &RangeError{Field: field, Value: n, Unit: "s", Min: lo, Max: hi}
	}
	return d, nil
}

// Max is the largest Duration, for ranges without an upper bound.
const Max = time.Duration(math.MaxInt64)

// Within checks a Duration from configuration: it must lie within [lo, hi].
func Within(field string, d, lo, hi time.Duration) error {
	if d < lo || d > hi {
		return fmt.Errorf("%s %s is out of range: want %s to %s", field, d, lo, hi)
	}
	return nil
}
