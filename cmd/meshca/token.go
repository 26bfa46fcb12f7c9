package main

import (
	"fmt"
	"time"

	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/spf13/cobra"
)

func (a *app) newTokenCommand() *cobra.Command {
	return groupCommand("token", "Join tokens for servers and agents", a.newTokenCreateCommand())
}

const tokenCreateLong = `create makes a single-use join token, replicated through Raft, and prints it.

  --kind server   lets one new server join the cluster:
                    meshca server --join <member API address> --join-token <token> \
                      --trust-bundle <bundle.pem> --kek-file <the cluster's KEK> ...
  --kind agent    lets one node agent attest to the servers (the default)

A token is consumed by its first use and expires after --ttl (default 10m, at
most 168h). Only its SHA-256 is stored; the token itself is printed here,
once, on standard output, and never logged: treat it as a secret. A token
is 43 characters of base64url; a server refuses an agent token and an agent
a server token.

--quiet prints the bare token and a newline, for scripts:
  T=$(meshca token create --kind agent --quiet)
  MESHCA_JOIN_TOKEN=$T meshca agent ...` + opLong

// tokenReport is what token create prints.
type tokenReport struct {
	Token       string    `json:"token"`
	Kind        string    `json:"kind"`
	Expires     time.Time `json:"expires"`
	ExpiresUnix int64     `json:"expires_unix"`
}

func (a *app) newTokenCreateCommand() *cobra.Command {
	var (
		o     opOptions
		kind  string
		ttl   time.Duration
		quiet bool
	)
	cmd := &cobra.Command{
		Use:   "create [--kind agent|server] [--ttl 10m] [--quiet]",
		Short: "Create a single-use join token",
		Long:  tokenCreateLong,
		Args:  cobra.NoArgs,
	}
	cmd.Flags().StringVar(&kind, "kind", server.TokenKindAgent, "who may use the token: agent or server")
	cmd.Flags().DurationVar(&ttl, "ttl", server.DefaultJoinTokenTTL, "lifetime of the token, whole seconds from 1s to 168h")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the token, for T=$(meshca token create --quiet)")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		if quiet && a.output == outputJSON {
			return usageErrorf("--quiet and --output json exclude each other: --quiet prints the bare token")
		}
		if kind != server.TokenKindAgent && kind != server.TokenKindServer {
			return usageErrorf("--kind %q: want %q or %q", kind, server.TokenKindAgent, server.TokenKindServer)
		}
		switch {
		case ttl < time.Second:
			return usageErrorf("--ttl %s: want at least 1s", ttl)
		case ttl > server.MaxJoinTokenTTL:
			return usageErrorf("--ttl %s: want at most %s", ttl, server.MaxJoinTokenTTL)
		case ttl%time.Second != 0:
			return usageErrorf("--ttl %s: want whole seconds", ttl)
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.CreateJoinToken(ctx, &operatorpb.CreateJoinTokenRequest{Kind: kind, TtlSeconds: int64(ttl / time.Second)})
		if err != nil {
			return c.callError("create "+kind+" join token", o, err)
		}
		r := tokenReport{Token: resp.Token, Kind: kind, Expires: time.Unix(resp.ExpiresUnix, 0).UTC(), ExpiresUnix: resp.ExpiresUnix}
		if quiet {
			_, err := fmt.Fprintln(a.stdout, r.Token)
			return err
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, r)
		}
		t := newTable(a.stdout, "")
		t.row("token", r.Token)
		t.row("kind", r.Kind)
		t.row("expires", fmt.Sprintf("%s (single use)", r.Expires.Format(time.RFC3339)))
		return t.flush()
	})
	return cmd
}
