package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spf13/cobra"
)

func (a *app) newAuthorityCommand() *cobra.Command {
	return groupCommand("authority", "The trust domain's roots, intermediates and JWT signing keys",
		a.newAuthorityShowCommand(),
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
	NotBefore  time.Time  `json:"not_before"`
	NotAfter   time.Time  `json:"not_after"`
	PrepareAt  *time.Time `json:"prepare_at,omitempty"`
	ActivateAt *time.Time `json:"activate_at,omitempty"`
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

A state is PREPARED (made, not signing yet; a prepared JWT key is already in
every JWT bundle), ACTIVE (signing), OLD (replaced, valid until it expires),
TAINTED or REVOKED. For an active intermediate or JWT key, NEXT PREPARED and
NEXT ACTIVE say when its successor is prepared (at half of its life) and
activated (at two thirds). Servers rotate their intermediates and the leader
the JWT keys on that schedule by themselves; expired ones are pruned.` + opLong,
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
			out = append(out, authorityReport{ID: x.Id, Kind: x.Kind, Profile: x.Profile, State: x.StateName, ServerID: x.ServerId,
				NotBefore: time.Unix(x.NotBeforeUnix, 0).UTC(), NotAfter: time.Unix(x.NotAfterUnix, 0).UTC(),
				PrepareAt: unixTime(x.PrepareAtUnix), ActivateAt: unixTime(x.ActivateAtUnix)})
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
		fmt.Fprintln(tw, "KIND\tPROFILE\tSTATE\tSERVER\tNOT AFTER\tNEXT PREPARED\tNEXT ACTIVE\tID")
		for _, r := range out {
			server := r.ServerID
			if server == "" {
				server = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Kind, r.Profile, r.State, server, r.NotAfter.Format(time.RFC3339),
				when(r.PrepareAt), when(r.ActivateAt), r.ID)
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		return nil
	})
	return cmd
}
