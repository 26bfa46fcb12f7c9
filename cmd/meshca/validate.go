package main

import (
	"fmt"
	"time"

	"github.com/meshca/meshca/ca"
)

// checkTTL refuses a lifetime under one second. Zero is refused too: the ca
// package would read it as "the default", which is not what --ttl 0 asks.
func checkTTL(ttl time.Duration) error {
	if ttl < time.Second {
		return &ca.RequestError{Reason: ca.ReasonInvalidTTL, Detail: fmt.Sprintf("TTL %s is under one second", ttl)}
	}
	return nil
}
