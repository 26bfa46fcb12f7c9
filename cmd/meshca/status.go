package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

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

It then lists every member of the Raft configuration as each answers the
contacted server (asked at once, 2 s each): its Raft state, applied index,
lag (entries the leader committed that it has not applied) and when it
last heard from the leader, or why it did not answer; and every root and
intermediate with its state and the days until it expires, the first to
expire first. --output json has the same fields.


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
	AttestedNodes  uint64 `json:"attested_nodes"`
	Entries        uint64 `json:"entries"`
	// Members is every server of the Raft configuration as it answered.
	Members []memberReport `json:"members"`
	// Authorities are the roots and intermediates, the first to expire
	// first.
	Authorities []authorityStatusReport `json:"authorities"`
	// History is the export to PostgreSQL, when configured.
	History *historyReport `json:"history,omitempty"`
	// IssuancePolicyRevision is the OPA issuance policy's (0: none);
	// Bundles the latest revision of each OPA bundle, by name.
	IssuancePolicyRevision uint64            `json:"issuance_policy_revision"`
	Bundles                map[string]uint64 `json:"bundles"`
}

// memberReport is one server of the cluster in status.
type memberReport struct {
	NodeID    string `json:"node_id"`
	RaftAddr  string `json:"raft_addr"`
	Suffrage  string `json:"suffrage"`
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
	RaftState string `json:"raft_state,omitempty"`
	Leader    bool   `json:"leader"`
	// AppliedIndex and CommitIndex as the member reported them; Lag is the
	// entries it has not applied of those the answering leader committed.
	AppliedIndex      uint64 `json:"applied_index"`
	CommitIndex       uint64 `json:"commit_index"`
	Lag               uint64 `json:"lag"`
	LastContactMillis int64  `json:"last_contact_ms"`
}

// authorityStatusReport is an authority and when it expires.
type authorityStatusReport struct {
	ID       string    `json:"id"`
	Kind     string    `json:"kind"`
	Profile  string    `json:"profile"`
	State    string    `json:"state"`
	ServerID string    `json:"server_id,omitempty"`
	NotAfter time.Time `json:"not_after"`
	// DaysLeft is the whole days until NotAfter (negative once expired).
	DaysLeft int `json:"days_left"`
}

func (a *app) newStatusCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "status [--addr unix:///path/admin.sock]",
		Short: "Show the cluster: every member and its lag, the leader, authorities and their expiry, the state hash and signing queue",
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
			AttestedNodes: resp.AttestedNodes, Entries: resp.Entries,
			IssuancePolicyRevision: resp.IssuancePolicyRevision, Bundles: map[string]uint64{},
			History: newHistoryReport(resp.History),
		}
		for _, b := range resp.Bundles {
			r.Bundles[b.Name] = b.Revision
		}
		var leaderCommit uint64
		for _, m := range resp.Members {
			if m.RaftState == "Leader" {
				leaderCommit = m.CommitIndex
			}
		}
		for _, m := range resp.Members {
			mr := memberReport{NodeID: m.NodeId, RaftAddr: m.RaftAddr, Suffrage: m.Suffrage, Reachable: m.Reachable, Error: m.Error,
				RaftState: m.RaftState, Leader: m.RaftState == "Leader", AppliedIndex: m.AppliedIndex, CommitIndex: m.CommitIndex,
				LastContactMillis: m.LastContactMillis}
			if m.Reachable && leaderCommit > m.AppliedIndex {
				mr.Lag = leaderCommit - m.AppliedIndex
			}
			r.Members = append(r.Members, mr)
		}
		now := time.Now()
		for _, au := range resp.Authorities {
			na := time.Unix(au.NotAfterUnix, 0).UTC()
			r.Authorities = append(r.Authorities, authorityStatusReport{ID: au.Id, Kind: au.Kind, Profile: au.Profile, State: au.State,
				ServerID: au.ServerId, NotAfter: na, DaysLeft: int(math.Floor(na.Sub(now).Hours() / 24))})
		}
		sort.SliceStable(r.Authorities, func(i, j int) bool { return r.Authorities[i].NotAfter.Before(r.Authorities[j].NotAfter) })
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
		t.row("attested nodes", r.AttestedNodes)
		t.row("entries", r.Entries)
		if r.IssuancePolicyRevision == 0 {
			t.row("issuance policy", "none (registration entries decide)")
		} else {
			t.row("issuance policy", fmt.Sprintf("revision %d", r.IssuancePolicyRevision))
		}
		var bundles []string
		for name, rev := range r.Bundles {
			bundles = append(bundles, fmt.Sprintf("%s (revision %d)", name, rev))
		}
		sort.Strings(bundles)
		if len(bundles) == 0 {
			bundles = []string{"none"}
		}
		t.row("OPA bundles", strings.Join(bundles, ", "))
		r.History.rows(t)
		if err := t.flush(); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "\nmembers (%d):\n", len(r.Members))
		t = newTable(a.stdout, "  ")
		t.row("NODE", "RAFT ADDRESS\tSUFFRAGE\tSTATE\tAPPLIED\tLAG\tLAST CONTACT")
		for _, m := range r.Members {
			if !m.Reachable {
				t.row(m.NodeID, m.RaftAddr+"\t"+m.Suffrage+"\tunreachable: "+m.Error+"\t\t\t")
				continue
			}
			contact := "-"
			switch {
			case m.Leader:
				contact = "(leader)"
			case m.LastContactMillis >= 0:
				contact = (time.Duration(m.LastContactMillis) * time.Millisecond).String() + " ago"
			}
			t.row(m.NodeID, fmt.Sprintf("%s\t%s\t%s\t%d\t%d\t%s", m.RaftAddr, m.Suffrage, m.RaftState, m.AppliedIndex, m.Lag, contact))
		}
		if err := t.flush(); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "\nauthorities (%d), the first to expire first:\n", len(r.Authorities))
		t = newTable(a.stdout, "  ")
		t.row("KIND", "PROFILE\tSTATE\tSERVER\tEXPIRES\tDAYS LEFT\tID")
		for _, au := range r.Authorities {
			t.row(au.Kind, fmt.Sprintf("%s\t%s\t%s\t%s\t%d\t%s", au.Profile, au.State, orDash(au.ServerID), au.NotAfter.Format(time.RFC3339), au.DaysLeft, au.ID))
		}
		return t.flush()
	})
	return cmd
}

// orDash is s, or "-" when it is empty, for a table cell.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
