package main

import (
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spf13/cobra"
)

func (a *app) newAuditCommand() *cobra.Command {
	return groupCommand("audit", "The audit trail: every allow and deny decision and operator action",
		a.newAuditListCommand(),
	)
}

const auditListLong = `list prints audit events, oldest first: every allow and deny decision
(issuance, attestation, joins) and every operator command, with who asked
(actor), what (action), about what (subject), the decision and the reason.

With a history database (PostgreSQL) configured on the server, list reads it:
the events of every server of the cluster, as long as the retention keeps
them. Otherwise, or with --local, it reads the asked server's own audit log
(the events it recorded itself, as far back as its log keeps them).

Filters: --actor (an agent's or admin's SPIFFE ID, "operator" for the admin
socket), --action (e.g. x509.sign, node.attest, entry.write), --decision
(allow, deny or info), --operator (operators' commands only), --since and
--until (an RFC 3339 time, 2026-12-01T00:00:00Z, or a duration meaning that
long ago, 24h). Pages: --limit events at most (default 100); when more
match, the output ends with the token of the next page: pass it as
--page-token. --output json prints {"events": [...], "next_page_token",
"source"}.` + opLong

// auditEventReport is an audit event as audit list prints it.
type auditEventReport struct {
	Server   string            `json:"server"`
	Seq      uint64            `json:"seq"`
	Time     time.Time         `json:"time"`
	Actor    string            `json:"actor,omitempty"`
	Action   string            `json:"action"`
	Subject  string            `json:"subject,omitempty"`
	Decision string            `json:"decision"`
	Reason   string            `json:"reason,omitempty"`
	Details  map[string]string `json:"details,omitempty"`
	Count    uint64            `json:"count"`
	Operator bool              `json:"operator,omitempty"`
}

func (a *app) newAuditListCommand() *cobra.Command {
	var (
		o                       opOptions
		req                     operatorpb.QueryAuditRequest
		since, until            string
		limit                   int
		actor, action, decision string
	)
	cmd := &cobra.Command{
		Use:   "list [--actor A] [--action X] [--decision allow|deny|info] [--operator] [--since T] [--until T] [--limit N] [--page-token P] [--local]",
		Short: "List audit events, from PostgreSQL when configured",
		Long:  auditListLong,
		Args:  cobra.NoArgs,
	}
	f := cmd.Flags()
	f.StringVar(&actor, "actor", "", "only events of this actor")
	f.StringVar(&action, "action", "", "only events of this action, e.g. x509.sign")
	f.StringVar(&decision, "decision", "", "only events with this decision: allow, deny or info")
	f.BoolVar(&req.Operator, "operator", false, "only operators' commands")
	f.StringVar(&since, "since", "", "only events at or after this time: RFC 3339, or a duration ago (24h)")
	f.StringVar(&until, "until", "", "only events before this time: RFC 3339, or a duration ago")
	f.IntVar(&limit, "limit", 100, "at most this many events (1 to 10000)")
	f.StringVar(&req.PageToken, "page-token", "", "continue where the previous page ended")
	f.BoolVar(&req.Local, "local", false, "read the server's own audit log even with a history database")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		switch decision {
		case "", "allow", "deny", "info":
		default:
			return usageErrorf("--decision %q: want allow, deny or info", decision)
		}
		s, u, err := parsePageFlags(since, until, limit)
		if err != nil {
			return err
		}
		req.Actor, req.Action, req.Decision, req.PageSize = actor, action, decision, int32(limit)
		if !s.IsZero() {
			req.SinceUnixNano = s.UnixNano()
		}
		if !u.IsZero() {
			req.UntilUnixNano = u.UnixNano()
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.QueryAudit(ctx, &req)
		if err != nil {
			return c.callError("audit list", o, err)
		}
		events := make([]auditEventReport, 0, len(resp.Events))
		for _, e := range resp.Events {
			events = append(events, auditEventReport{Server: e.Server, Seq: e.Seq, Time: time.Unix(0, e.TimeUnixNano).UTC(), Actor: e.Actor,
				Action: e.Action, Subject: e.Subject, Decision: e.Decision, Reason: e.Reason, Details: e.Details, Count: e.Count, Operator: e.Operator})
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, struct {
				Events        []auditEventReport `json:"events"`
				NextPageToken string             `json:"next_page_token,omitempty"`
				Source        string             `json:"source"`
			}{events, resp.NextPageToken, resp.Source})
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tSERVER\tSEQ\tACTOR\tACTION\tSUBJECT\tDECISION\tREASON\tDETAILS")
		for _, e := range events {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Format(time.RFC3339Nano), e.Server, e.Seq, dash(e.Actor), e.Action,
				dash(e.Subject), e.Decision, dash(e.Reason), detailsText(e.Details, e.Count))
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		fmt.Fprintf(a.stdout, "(%d events from %s)\n", len(events), resp.Source)
		if resp.NextPageToken != "" {
			fmt.Fprintf(a.stdout, "more: --page-token %s\n", resp.NextPageToken)
		}
		return nil
	})
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func detailsText(d map[string]string, count uint64) string {
	var parts []string
	if count > 1 {
		parts = append(parts, fmt.Sprintf("count=%d", count))
	}
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, k+"="+d[k])
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

// parsePageFlags checks the flags of a paged history query: --since,
// --until (see parseTimeFlag) and --limit (1 to 10000).
func parsePageFlags(since, until string, limit int) (s, u time.Time, err error) {
	if limit < 1 || limit > 10000 {
		return s, u, usageErrorf("--limit %d: want 1 to 10000", limit)
	}
	now := time.Now()
	if s, err = parseTimeFlag("--since", since, now); err != nil {
		return s, u, err
	}
	u, err = parseTimeFlag("--until", until, now)
	return s, u, err
}

// parseTimeFlag reads a --since/--until value: empty (no bound), an RFC
// 3339 time, or a positive duration meaning that long before now.
func parseTimeFlag(flag, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		if t.Unix() <= 0 {
			return time.Time{}, usageErrorf("%s %q: a time after 1970", flag, v)
		}
		return t, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 || d > 100*365*24*time.Hour {
		return time.Time{}, usageErrorf("%s %q: want an RFC 3339 time (2026-12-01T00:00:00Z) or a positive duration ago (24h)", flag, v)
	}
	return now.Add(-d), nil
}

// serialHex prints a serial number.
func serialHex(b []byte) string { return hex.EncodeToString(b) }
