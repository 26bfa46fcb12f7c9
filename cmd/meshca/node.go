package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spf13/cobra"
)

func (a *app) newNodeCommand() *cobra.Command {
	return groupCommand("node", "Attested node agents",
		a.newNodeListCommand(),
		a.newNodeShowCommand(),
		a.newNodeBanCommand(true),
		a.newNodeBanCommand(false),
		a.newNodeEvictCommand(),
	)
}

// nodeLong is what every node command's help says about nodes.
const nodeLong = `

A node is an agent that attested to the servers: its SPIFFE ID
(spiffe://<trust domain>/meshca/agent/<attestor>/...), the attestation method
(join_token, x509pop, k8s_psat), the node's selectors, when it attested and
when its current agent SVID expires. Registration entries name an agent by
that SPIFFE ID in --parent-id.` + opLong

// nodeReport is a node as the node commands print it; the JSON field names
// are those of the operator API's Node.
type nodeReport struct {
	SPIFFEID     string           `json:"spiffe_id"`
	Attestor     string           `json:"attestor"`
	Selectors    []selectorReport `json:"selectors"`
	Attested     time.Time        `json:"attested"`
	AttestedUnix int64            `json:"attested_unix"`
	Expires      time.Time        `json:"expires"`
	ExpiresUnix  int64            `json:"expires_unix"`
	Banned       bool             `json:"banned"`
}

func newNodeReport(n *operatorpb.Node) nodeReport {
	return nodeReport{
		SPIFFEID: n.SpiffeId, Attestor: n.Attestor, Selectors: selectorReports(n.Selectors),
		Attested: time.Unix(n.AttestedUnix, 0).UTC(), AttestedUnix: n.AttestedUnix,
		Expires: time.Unix(n.ExpiresUnix, 0).UTC(), ExpiresUnix: n.ExpiresUnix,
		Banned: n.Banned,
	}
}

func (a *app) newNodeListCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the attested node agents",
		Long:  `list prints every attested node agent.` + nodeLong,
		Args:  cobra.NoArgs,
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.ListNodes(ctx, &operatorpb.ListNodesRequest{})
		if err != nil {
			return c.callError("list nodes", o, err)
		}
		nodes := make([]nodeReport, 0, len(resp.Nodes))
		for _, n := range resp.Nodes {
			nodes = append(nodes, newNodeReport(n))
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, struct {
				Nodes []nodeReport `json:"nodes"`
			}{nodes})
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SPIFFE ID\tATTESTOR\tATTESTED\tEXPIRES\tBANNED")
		for _, n := range nodes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.SPIFFEID, n.Attestor, n.Attested.Format(time.RFC3339), n.Expires.Format(time.RFC3339),
				map[bool]string{true: "yes", false: "no"}[n.Banned])
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		return nil
	})
	return cmd
}

func (a *app) newNodeShowCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "show SPIFFE-ID",
		Short: "Show an attested node agent",
		Long:  `show prints one attested node agent, found by its SPIFFE ID.` + nodeLong,
		Args:  cobra.ExactArgs(1),
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.GetNode(ctx, &operatorpb.GetNodeRequest{SpiffeId: args[0]})
		if err != nil {
			return c.callError("show node "+args[0], o, err)
		}
		r := newNodeReport(resp.Node)
		if a.output == outputJSON {
			return writeJSON(a.stdout, r)
		}
		t := newTable(a.stdout, "")
		t.row("SPIFFE ID", r.SPIFFEID)
		t.row("attestor", r.Attestor)
		for _, s := range r.Selectors {
			t.row("selector", s)
		}
		t.row("attested", r.Attested.Format(time.RFC3339))
		t.row("SVID expires", r.Expires.Format(time.RFC3339))
		t.row("banned", map[bool]string{true: "yes", false: "no"}[r.Banned])
		return t.flush()
	})
	return cmd
}
