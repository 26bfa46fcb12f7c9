package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spf13/cobra"
)

func (a *app) newAdminCommand() *cobra.Command {
	return groupCommand("admin", "Who may use the operator API over mutual TLS",
		a.newAdminListCommand(),
		a.newAdminChangeCommand("add", "Make a SPIFFE ID an admin", "added"),
		a.newAdminChangeCommand("remove", "Take a SPIFFE ID's admin rights away", "removed"),
	)
}

// adminLong is what every admin command's help says about admins.
const adminLong = `

Admins are the SPIFFE IDs whose X509-SVIDs may use the operator API over
mutual TLS (a server's --admin-addr; get an SVID with "meshca x509 mint
--addr"). The list is replicated: every server admits the same admins, and a
change on one server applies to all at once. --admin-id seeds the list while
it is empty (when the cluster is bootstrapped); afterwards these commands
change it, and a server whose --admin-id are not all admins warns at start.
The admin socket (local, mode 0600) needs no admin ID: it is how the first
admin is added or the last one replaced.` + opLong

type adminReport struct {
	SPIFFEID string    `json:"spiffe_id"`
	Added    time.Time `json:"added"`
	AddedBy  string    `json:"added_by"`
}

func (a *app) newAdminListCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the admins",
		Long:  `list prints every admin, when and by whom it was added.` + adminLong,
		Args:  cobra.NoArgs,
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.ListAdmins(ctx, &operatorpb.ListAdminsRequest{})
		if err != nil {
			return c.callError("list admins", o, err)
		}
		admins := make([]adminReport, 0, len(resp.Admins))
		for _, ad := range resp.Admins {
			admins = append(admins, adminReport{SPIFFEID: ad.SpiffeId, Added: time.Unix(ad.AddedUnix, 0).UTC(), AddedBy: ad.AddedBy})
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, struct {
				Admins []adminReport `json:"admins"`
			}{admins})
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SPIFFE ID\tADDED\tADDED BY")
		for _, ad := range admins {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", ad.SPIFFEID, ad.Added.Format(time.RFC3339), ad.AddedBy)
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		return nil
	})
	return cmd
}

// newAdminChangeCommand is admin add or admin remove.
func (a *app) newAdminChangeCommand(verb, short, done string) *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   verb + " SPIFFE-ID",
		Short: short,
		Long:  verb + " changes the cluster's admins through Raft: every server applies it." + adminLong,
		Args:  cobra.ExactArgs(1),
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		ctx, c, finish, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer finish()
		if verb == "add" {
			_, err = c.AddAdmin(ctx, &operatorpb.AddAdminRequest{SpiffeId: args[0]})
		} else {
			_, err = c.RemoveAdmin(ctx, &operatorpb.RemoveAdminRequest{SpiffeId: args[0]})
		}
		if err != nil {
			return c.callError(verb+" admin "+args[0], o, err)
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, struct {
				SPIFFEID string `json:"spiffe_id"`
				Result   string `json:"result"`
			}{args[0], done})
		}
		fmt.Fprintf(a.stdout, "admin %s %s\n", args[0], done)
		return nil
	})
	return cmd
}
