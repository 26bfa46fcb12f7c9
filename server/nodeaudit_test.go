package server

import (
	"strings"
	"testing"

	"github.com/meshca/meshca/proto/nodepb"
)

// Events an agent ships are checked before they reach the database.
func TestCheckAgentEvent(t *testing.T) {
	ok := &nodepb.AgentAuditEvent{Seq: 1, Action: "workload.fetch_x509_svid", Decision: "deny", Actor: "pid 1 uid 0", Reason: "no entry matches",
		Details: map[string]string{"selectors": "6"}}
	if err := checkAgentEvent(ok); err != nil {
		t.Fatalf("a real event refused: %v", err)
	}
	many := map[string]string{}
	for i := 0; i <= maxAuditDetails; i++ {
		many[strings.Repeat("k", i+1)] = "v"
	}
	for name, e := range map[string]*nodepb.AgentAuditEvent{
		"decision":     {Seq: 1, Action: "a", Decision: "maybe"},
		"no action":    {Seq: 1, Decision: "allow"},
		"long reason":  {Seq: 1, Action: "a", Decision: "deny", Reason: strings.Repeat("x", maxAuditField+1)},
		"not UTF-8":    {Seq: 1, Action: "a", Decision: "deny", Subject: "\xff\xfe"},
		"NUL":          {Seq: 1, Action: "a", Decision: "deny", Actor: "a\x00b"},
		"many details": {Seq: 1, Action: "a", Decision: "info", Details: many},
		"long detail":  {Seq: 1, Action: "a", Decision: "info", Details: map[string]string{"k": strings.Repeat("v", maxAuditField+1)}},
	} {
		if err := checkAgentEvent(e); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
