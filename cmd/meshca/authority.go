package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func (a *app) newAuthorityCommand() *cobra.Command {
	return groupCommand("authority", "The trust domain's roots, intermediates and JWT signing keys",
		a.newAuthorityShowCommand(),
		a.newAuthorityStepCommand("prepare"),
		a.newAuthorityStepCommand("activate"),
		a.newAuthorityStepCommand("taint"),
		a.newAuthorityStepCommand("revoke"),
	)
}

// authorityReport is an authority as the authority commands print it; the
// JSON field names are those of the operator API's Authority.
type authorityReport struct {
	ID         string     `json:"id"`
	Kind       string     `json:"kind"`
	Profile    string     `json:"profile"`
	State      string     `json:"state"`
	ServerID   string     `json:"server_id,omitempty"`
	ParentID   string     `json:"parent_id,omitempty"`
	NotBefore  time.Time  `json:"not_before"`
	NotAfter   time.Time  `json:"not_after"`
	PrepareAt  *time.Time `json:"prepare_at,omitempty"`
	ActivateAt *time.Time `json:"activate_at,omitempty"`
	// LiveCertificates are the unexpired, unrevoked certificates of the
	// ledger it signed; PendingCertificates those not re-issued under
	// another authority yet, held by PendingNodeCount nodes (the first of
	// them in PendingNodes).
	LiveCertificates    int64    `json:"live_certificates"`
	PendingCertificates int64    `json:"pending_certificates"`
	PendingNodeCount    int64    `json:"pending_node_count"`
	PendingNodes        []string `json:"pending_nodes,omitempty"`
	NextStep            string   `json:"next_step,omitempty"`
	Warning             string   `json:"warning,omitempty"`
}

func newAuthorityReport(x *operatorpb.Authority) authorityReport {
	if x == nil {
		return authorityReport{}
	}
	return authorityReport{ID: x.Id, Kind: x.Kind, Profile: x.Profile, State: x.StateName, ServerID: x.ServerId, ParentID: x.ParentId,
		NotBefore: time.Unix(x.NotBeforeUnix, 0).UTC(), NotAfter: time.Unix(x.NotAfterUnix, 0).UTC(),
		PrepareAt: unixTime(x.PrepareAtUnix), ActivateAt: unixTime(x.ActivateAtUnix),
		LiveCertificates: x.LiveCertificates, PendingCertificates: x.PendingCertificates, PendingNodeCount: x.PendingNodeCount,
		PendingNodes: x.PendingNodes, NextStep: x.NextStep, Warning: x.Warning}
}

func unixTime(s int64) *time.Time {
	if s == 0 {
		return nil
	}
	t := time.Unix(s, 0).UTC()
	return &t
}

func (a *app) newAuthorityShowCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "show",
		Short: "List the roots, every server's intermediates and the JWT keys",
		Long: `show lists the trust domain's authorities with their rotation state:

  root          one per profile (ecdsa, sm2), 10 years
  intermediate  one per server and profile, 30 days; the SERVER column says
                which server holds its key (it never leaves that server)
  jwt           the cluster's JWT-SVID signing keys (ES256), 30 days

A state is PREPARED (made, not signing yet; a prepared root or JWT key is
already in every trust or JWT bundle), ACTIVE (signing), OLD (replaced, valid until it expires),
TAINTED or REVOKED. For an active intermediate or JWT key, NEXT PREPARED and
NEXT ACTIVE say when its successor is prepared (at half of its life) and
activated (at two thirds). Servers rotate their intermediates and the leader
the JWT keys on that schedule by themselves; expired ones are pruned.

LIVE CERTS counts the unexpired, unrevoked certificates of the ledger the
authority signed, and NEXT STEP says what happens to it next; for a tainted
one, the re-issue's progress ("re-issuing: N of M re-issued, K nodes
pending"). A root within a year of its expiry is warned about on standard
error. See meshca authority taint and revoke.` + opLong,
		Args: cobra.NoArgs,
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.ListAuthorities(ctx, &operatorpb.ListAuthoritiesRequest{})
		if err != nil {
			return c.callError("list authorities", o, err)
		}
		out := make([]authorityReport, 0, len(resp.Authorities))
		for _, x := range resp.Authorities {
			out = append(out, newAuthorityReport(x))
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, struct {
				Authorities []authorityReport `json:"authorities"`
			}{out})
		}
		when := func(t *time.Time) string {
			if t == nil {
				return "-"
			}
			return t.Format(time.RFC3339)
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "KIND\tPROFILE\tSTATE\tSERVER\tNOT AFTER\tNEXT PREPARED\tNEXT ACTIVE\tLIVE CERTS\tID\tNEXT STEP")
		for _, r := range out {
			server := r.ServerID
			if server == "" {
				server = "-"
			}
			live := fmt.Sprint(r.LiveCertificates)
			if r.Kind == "jwt" {
				live = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Kind, r.Profile, r.State, server, r.NotAfter.Format(time.RFC3339),
				when(r.PrepareAt), when(r.ActivateAt), live, r.ID, r.NextStep)
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		for _, r := range out {
			if r.Warning != "" {
				fmt.Fprintf(a.stderr, "meshca: warning: %s %s: %s\n", r.Kind, r.ID, r.Warning)
			}
		}
		return nil
	})
	return cmd
}

// authorityStepReport is what authority taint and revoke print.
type authorityStepReport struct {
	DryRun    bool            `json:"dry_run"`
	Authority authorityReport `json:"authority"`
	// Successor is the root a prepare of a root made.
	Successor *authorityReport `json:"successor,omitempty"`
	// Done is set once the step took full effect (with --watch).
	Done bool `json:"done"`
}

func (a *app) newAuthorityStepCommand(step string) *cobra.Command {
	var o opOptions
	var d destructiveOptions
	var force, watch, root bool
	var profile string
	var interval time.Duration
	cmd := &cobra.Command{
		Use:  step + " ID",
		Args: cobra.ExactArgs(1),
	}
	rootSteps := step == "prepare" || step == "activate"
	if rootSteps {
		cmd.Use = step + " ID | --root --profile P"
		cmd.Args = cobra.MaximumNArgs(1)
	}
	destructive := step == "taint" || step == "revoke"
	switch step {
	case "prepare":
		cmd.Short = "Prepare the successor of an active intermediate or root now"
		cmd.Long = `prepare asks the server holding an active intermediate (ID) to prepare its
successor now instead of at half of its life: a new key on that server,
certified by the root and recorded PREPARED. It is refused when a successor
is prepared already. --watch waits until the successor is recorded;
--dry-run checks without asking.

Roots: prepare ROOT-ID (the active root of a profile), or --root --profile P,
makes the profile's next root at once: a new key, sealed under the cluster's
KEK like the active root's, and a self-signed certificate for 10 years,
recorded PREPARED. The servers trust it at once; the leader publishes its
CRL within moments, and with it the root joins every agent's trust bundle
(SDS validation contexts, Workload API bundles). It signs nothing until
meshca authority activate. meshca does not cross-sign: the new root reaches every relying
party before it signs, so all of them trust both roots while both are in
use (see the README's root rotation).` + opLong
	case "activate":
		cmd.Short = "Have a server activate its prepared intermediate now"
		cmd.Long = `activate asks the server holding a prepared intermediate (ID) to sign with
it now instead of at two thirds of its predecessor's life (it publishes its
CRL first); the predecessor becomes OLD and stays valid until it expires.
It is refused for an active intermediate, with nothing or something
prepared. --watch waits until it is recorded ACTIVE; --dry-run checks without
asking.

Roots: activate ROOT-ID (a prepared root), or --root --profile P, makes the
prepared root sign (its CRL is published first) and the previous root OLD.
Every server then replaces its intermediate of that profile with one the new
root certifies, so new certificates chain to the new root while the ones
chained to the old root keep verifying (it stays in every bundle). --watch
follows until every server's intermediate is certified by the new root. To
retire the old root: meshca authority taint OLD-ROOT-ID (everything chained
to it is re-issued), then revoke it (it leaves every bundle).` + opLong
	case "taint":
		cmd.Short = "Mark an authority compromised: everything chained to it is re-issued at once"
		cmd.Long = `taint marks an authority (an ID of meshca authority show) compromised. For
a server's active intermediate, that server stops signing with it and
activates a successor at once; an old intermediate may be tainted too. A
root can be tainted only once a successor is active (prepare and activate
one first): the intermediates it signed are tainted with it. Every agent then
re-issues every SVID chained to it (its own and its workloads'), each at a
random moment within its re-issue jitter (5 s by default) so that a fleet
does not come at once, and the servers' admission limits pace the rest.
The tainted authority still verifies meanwhile (its CRL is still served),
so no workload is cut off.

--watch follows the progress ("re-issued N of M, K nodes pending") until
every certificate is re-issued; then revoke it (meshca authority revoke).
It says what it will do and asks first, unless --yes; --dry-run only
prints.

JWT signing keys (jwt/KID): a successor signs at once and agents re-sign
the JWT-SVIDs they cached from the tainted key, which stays in every JWT
bundle (its JWT-SVIDs live 5 minutes at most) until it is revoked.` + opLong
	case "revoke":
		cmd.Short = "Revoke a tainted authority: it leaves every bundle and its parent's CRL lists it"
		cmd.Long = `revoke revokes a tainted authority: its CRL is no longer pushed to agents
or served, and an intermediate's serial is listed in its root's CRL, so
every proxy refuses what it signed. A revoked root leaves every trust
bundle, with the intermediates it signed. It is refused while unexpired
certificates that were not re-issued still chain to it (the refusal says
how many and which nodes hold them), unless --force; and refused for an
authority that is not tainted (taint it first). With --watch it waits
until the parent's CRL lists it. A JWT key (jwt/KID) leaves every JWT
bundle; revoking it is refused until the JWT-SVIDs it signed have expired.

It says what it will do and asks first, unless --yes; --dry-run only prints.` + opLong
		cmd.Flags().BoolVar(&force, "force", false, "revoke although certificates not re-issued still chain to it")
	}
	addOpFlags(cmd, &o)
	if destructive {
		addDestructiveFlags(cmd, &d)
	} else {
		cmd.Flags().BoolVar(&d.dryRun, "dry-run", false, "check whether the step would be taken, and do nothing")
	}
	if rootSteps {
		cmd.Flags().BoolVar(&root, "root", false, "the root of --profile instead of an ID: its active root (prepare) or its prepared one (activate)")
		cmd.Flags().StringVar(&profile, "profile", "", "with --root: ecdsa or sm2")
	}
	cmd.Flags().BoolVar(&watch, "watch", false, "follow until the step took full effect (bounded by --timeout)")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "with --watch: how often to look")
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		if interval < 10*time.Millisecond {
			return usageErrorf("--interval %s: want at least 10ms", interval)
		}
		switch {
		case root && len(args) == 1:
			return usageErrorf("give an ID or --root --profile P, not both")
		case root && profile != "ecdsa" && profile != "sm2":
			return usageErrorf("--root needs --profile ecdsa or --profile sm2")
		case !root && profile != "":
			return usageErrorf("--profile goes with --root")
		case !root && len(args) == 0:
			return usageErrorf("which authority? give its ID (meshca authority show) or --root --profile P")
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		if root {
			id, err := rootFor(ctx, c, step, profile)
			if err != nil {
				return c.callError(step+" the "+profile+" root", o, err)
			}
			args = []string{id}
		}
		call := map[string]func(context.Context, *operatorpb.AuthorityStepRequest, ...grpc.CallOption) (*operatorpb.AuthorityStepResponse, error){
			"prepare": c.PrepareAuthority, "activate": c.ActivateAuthority, "taint": c.TaintAuthority, "revoke": c.RevokeAuthority}[step]
		req := &operatorpb.AuthorityStepRequest{Id: args[0], Force: force, DryRun: true}
		plan, err := call(ctx, req)
		if err != nil {
			return c.callError(step+" "+args[0], o, err)
		}
		if d.dryRun {
			return a.printAuthorityStep(authorityStepReport{DryRun: true, Authority: newAuthorityReport(plan.Authority), Successor: successorReport(plan)})
		}
		what := fmt.Sprintf("This taints %s %s: %d live certificate(s) chained to it are re-issued", plan.Authority.Kind, args[0], plan.Authority.LiveCertificates)
		if step == "revoke" {
			what = fmt.Sprintf("This revokes %s %s: everything it signed stops verifying", plan.Authority.Kind, args[0])
		}
		if destructive {
			if err := a.confirm(cmd, d, what); err != nil {
				return err
			}
		}
		req.DryRun = false
		resp, err := call(ctx, req)
		if err != nil {
			return c.callError(step+" "+args[0], o, err)
		}
		rep := authorityStepReport{Authority: newAuthorityReport(resp.Authority), Successor: successorReport(resp)}
		if !watch {
			return a.printAuthorityStep(rep)
		}
		if rep.Successor != nil { // a root's prepare is done when it returns
			rep.Done = true
			return a.printAuthorityStep(rep)
		}
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			list, err := c.ListAuthorities(ctx, &operatorpb.ListAuthoritiesRequest{})
			if err != nil {
				return c.callError("follow "+args[0], o, err)
			}
			var successor *operatorpb.Authority
			for _, x := range list.Authorities {
				if x.Id == args[0] {
					rep.Authority = newAuthorityReport(x)
				}
			}
			for _, x := range list.Authorities {
				if x.Id != args[0] && x.Kind == rep.Authority.Kind && x.Profile == rep.Authority.Profile && x.ServerId == rep.Authority.ServerID && x.StateName == "PREPARED" {
					successor = x
				}
			}
			switch step {
			case "prepare":
				rep.Done = successor != nil
				if rep.Done {
					rep.Authority.NextStep = "successor prepared: " + successor.Id
				}
			case "activate":
				rep.Done = rep.Authority.State == "ACTIVE"
				if rep.Done && rep.Authority.Kind == "root" {
					// Followed until every server's intermediate is certified by it.
					n, of := 0, 0
					for _, x := range list.Authorities {
						if x.Kind == "intermediate" && x.Profile == rep.Authority.Profile && x.StateName == "ACTIVE" {
							of++
							if x.ParentId == rep.Authority.ID {
								n++
							}
						}
					}
					rep.Done = n == of
					rep.Authority.NextStep = fmt.Sprintf("%d of %d servers' intermediates certified by it", n, of)
				}
			case "taint":
				rep.Done = rep.Authority.PendingCertificates == 0
			case "revoke":
				rep.Done = rep.Authority.State == "REVOKED"
			}
			if a.output != outputJSON {
				fmt.Fprintf(a.stderr, "%s %s: %s\n", rep.Authority.State, args[0], rep.Authority.NextStep)
			}
			if rep.Done {
				return a.printAuthorityStep(rep)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("following %s: %s: %w", args[0], rep.Authority.NextStep, ctx.Err())
			case <-tick.C:
			}
		}
	})
	return cmd
}

func (a *app) printAuthorityStep(r authorityStepReport) error {
	if a.output == outputJSON {
		return writeJSON(a.stdout, r)
	}
	prefix := ""
	if r.DryRun {
		prefix = "dry run: would be "
	}
	fmt.Fprintf(a.stdout, "%s%s %s %s\n", prefix, r.Authority.State, r.Authority.Kind, r.Authority.ID)
	t := newTable(a.stdout, "  ")
	t.row("live certificates", r.Authority.LiveCertificates)
	t.row("pending", fmt.Sprintf("%d certificate(s) on %d node(s)", r.Authority.PendingCertificates, r.Authority.PendingNodeCount))
	for _, n := range r.Authority.PendingNodes {
		t.row("pending node", n)
	}
	t.row("next step", r.Authority.NextStep)
	if s := r.Successor; s != nil {
		id := s.ID
		if id == "" {
			id = "(made on the real run)"
		}
		t.row("successor", fmt.Sprintf("%s %s %s, not after %s", s.State, s.Kind, id, s.NotAfter.Format(time.RFC3339)))
		t.row("successor next step", s.NextStep)
	}
	return t.flush()
}

// successorReport is the root a prepare of a root made, or nil.
func successorReport(resp *operatorpb.AuthorityStepResponse) *authorityReport {
	if resp.GetSuccessor() == nil {
		return nil
	}
	r := newAuthorityReport(resp.Successor)
	return &r
}

// rootFor finds the root of a profile a step names with --root: the active
// one for prepare, the prepared one for activate.
func rootFor(ctx context.Context, c *opClient, step, profile string) (string, error) {
	list, err := c.ListAuthorities(ctx, &operatorpb.ListAuthoritiesRequest{})
	if err != nil {
		return "", err
	}
	want := map[string]string{"prepare": "ACTIVE", "activate": "PREPARED"}[step]
	for _, x := range list.Authorities {
		if x.Kind == "root" && x.Profile == profile && x.StateName == want {
			return x.Id, nil
		}
	}
	if step == "activate" {
		return "", status.Errorf(codes.FailedPrecondition, "no prepared %s root: prepare one first (meshca authority prepare --root --profile %s)", profile, profile)
	}
	return "", status.Errorf(codes.NotFound, "no active %s root", profile)
}
