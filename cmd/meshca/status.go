package main

import (
	"fmt"

	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spf13/cobra"
)

const statusLong = `status asks one server, through its admin socket, for its view of the cluster:
its node ID and trust domain, its Raft state (Leader, Follower, Candidate),
the leader it knows, its applied and commit indexes, the hash of its
replicated state, the number of ledger records, the depth of its signing
queue (CSRs admitted and not yet signed: a storm of renewals shows here
first), and whether it is ready: whether it can serve writes now (the
cluster is bootstrapped, this server is a member of the Raft configuration
and recorded in the state, and a leader is known and answers; on the
leader, a quorum confirms it). When it is not, the reason says why: not
bootstrapped, removed from the cluster, no leader, no quorum, leader
unreachable.

The applied index, the state hash and the ledger size are of one moment.
Servers that have applied the same entries report the same state hash, so
comparing the hashes of every server at the same index shows whether they
agree.

With a history database configured, status also shows the export to
PostgreSQL: the database (without its password), whether this server exports
the ledger (the leader does), the ledger cursor (the Raft index exported up
to) and the lag: ledger records not exported yet and the age of the oldest,
this server's audit events not exported yet and the age of the oldest, and
the export's last error.` + opLong

// statusReport is what status prints; the JSON field names are those of
// the operator API's StatusResponse.
type statusReport struct {
	NodeID        string `json:"node_id"`
	TrustDomain   string `json:"trust_domain"`
	RaftState     string `json:"raft_state"`
	LeaderID      string `json:"leader_id"`
	LeaderAddr    string `json:"leader_addr"`
	AppliedIndex  uint64 `json:"applied_index"`
	CommitIndex   uint64 `json:"commit_index"`
	StateHash     string `json:"state_hash"`
	LedgerRecords uint64 `json:"ledger_records"`
	Ready         bool   `json:"ready"`
	// SignQueueDepth is the number of CSRs admitted and not yet signed.
	SignQueueDepth int64  `json:"sign_queue_depth"`
	ReadyReason    string `json:"ready_reason,omitempty"`
	// History is the export to PostgreSQL, when configured.
	History *historyReport `json:"history,omitempty"`
}

func (a *app) newStatusCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "status [--addr unix:///path/admin.sock]",
		Short: "Show a server's Raft state, leader, state hash and signing queue",
		Long:  statusLong,
		Args:  cobra.NoArgs,
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.Status(ctx, &operatorpb.StatusRequest{})
		if err != nil {
			return c.callError("status", o, err)
		}
		r := statusReport{
			NodeID: resp.NodeId, TrustDomain: resp.TrustDomain, RaftState: resp.RaftState,
			LeaderID: resp.LeaderId, LeaderAddr: resp.LeaderAddr, AppliedIndex: resp.AppliedIndex,
			CommitIndex: resp.CommitIndex, StateHash: resp.StateHash, LedgerRecords: resp.LedgerRecords,
			Ready: resp.Ready, ReadyReason: resp.ReadyReason, SignQueueDepth: resp.SignQueueDepth,
			History: newHistoryReport(resp.History),
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, r)
		}
		leader := "none known (election under way, or no quorum)"
		if r.LeaderID != "" {
			leader = fmt.Sprintf("%s at %s", r.LeaderID, r.LeaderAddr)
			if r.LeaderID == r.NodeID {
				leader += " (this server)"
			}
		}
		t := newTable(a.stdout, "")
		t.row("node", r.NodeID)
		if r.Ready {
			t.row("ready", true)
		} else {
			t.row("ready", "false: "+r.ReadyReason)
		}
		t.row("trust domain", r.TrustDomain)
		t.row("raft state", r.RaftState)
		t.row("leader", leader)
		t.row("applied index", r.AppliedIndex)
		t.row("commit index", r.CommitIndex)
		t.row("state hash", r.StateHash)
		t.row("ledger records", r.LedgerRecords)
		t.row("sign queue", fmt.Sprintf("%d CSRs admitted, not yet signed", r.SignQueueDepth))
		r.History.rows(t)
		return t.flush()
	})
	return cmd
}
