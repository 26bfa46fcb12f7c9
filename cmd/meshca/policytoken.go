package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spf13/cobra"
)

// issue 12 tokens: meshca policy token create|list|revoke.

func (a *app) newPolicyTokenCommand() *cobra.Command {
	return groupCommand("token", "Bearer tokens of the OPA bundle service (for OPAs without an X509-SVID)",
		a.newPolicyTokenCreateCommand(), a.newPolicyTokenListCommand(), a.newPolicyTokenRevokeCommand())
}

const policyTokenCreateLong = `create makes a bearer token of the servers' OPA bundle service and prints
it. A stock OPA without an X509-SVID pulls bundles with it:

  services:
    meshca:
      url: https://<server>:<bundle port>/v1
      tls: {ca_cert: /etc/opa/bundle.pem}         # meshca bundle show
      credentials:
        bearer: {token_path: /etc/opa/token}      # or token: <the token>

--bundle limits the token to these bundles (repeat it; none: every bundle);
another bundle is refused with 403. --ttl bounds its life on the servers'
clock (0, the default: until revoked). A wrong, expired or revoked token is
refused with 401; every fetch, allowed or refused, is audited, naming the
token by its ID and name.

Only the SHA-256 of the token's secret is stored, through Raft; the token is
printed here, once, on standard output, and never logged: treat it as a
secret. --quiet prints the bare token and a newline, for scripts:
  meshca policy token create --name opa-edge --bundle authz --quiet > /etc/opa/token` + opLong

type bundleTokenReport struct {
	ID      string     `json:"id"`
	Name    string     `json:"name"`
	Bundles []string   `json:"bundles"`
	Created time.Time  `json:"created"`
	Expires *time.Time `json:"expires,omitempty"`
	Expired bool       `json:"expired"`
	Author  string     `json:"author"`
	Token   string     `json:"token,omitempty"`
}

func toBundleTokenReport(i *operatorpb.BundleTokenInfo) bundleTokenReport {
	r := bundleTokenReport{ID: i.Id, Name: i.Name, Bundles: i.Bundles, Created: time.Unix(i.CreatedUnix, 0).UTC(), Expired: i.Expired, Author: i.Author}
	if r.Bundles == nil {
		r.Bundles = []string{}
	}
	if i.ExpiresUnix != 0 {
		t := time.Unix(i.ExpiresUnix, 0).UTC()
		r.Expires = &t
	}
	return r
}

func (r bundleTokenReport) bundles() string {
	if len(r.Bundles) == 0 {
		return "(every bundle)"
	}
	return strings.Join(r.Bundles, ",")
}

func (r bundleTokenReport) expires() string {
	switch {
	case r.Expires == nil:
		return "never"
	case r.Expired:
		return r.Expires.Format(time.RFC3339) + " (expired)"
	}
	return r.Expires.Format(time.RFC3339)
}

func (a *app) newPolicyTokenCreateCommand() *cobra.Command {
	var (
		o       opOptions
		name    string
		ttl     time.Duration
		bundles []string
		quiet   bool
	)
	cmd := &cobra.Command{
		Use:   "create --name NAME [--bundle NAME]... [--ttl D] [--quiet]",
		Short: "Create a bearer token of the OPA bundle service (printed once)",
		Long:  policyTokenCreateLong,
		Args:  cobra.NoArgs,
	}
	cmd.Flags().StringVar(&name, "name", "", "a unique label for the token (required)")
	cmd.Flags().StringArrayVar(&bundles, "bundle", nil, "a bundle the token may download; repeat it (none: every bundle)")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "lifetime, whole seconds (0: until revoked)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the token")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		if name == "" {
			return usageErrorf("--name is required")
		}
		if quiet && a.output == outputJSON {
			return usageErrorf("--quiet and --output json exclude each other: --quiet prints the bare token")
		}
		if ttl < 0 || ttl%time.Second != 0 {
			return usageErrorf("--ttl %s: want 0 or a positive number of whole seconds", ttl)
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.CreateBundleToken(ctx, &operatorpb.CreateBundleTokenRequest{Name: name, TtlSeconds: int64(ttl / time.Second), Bundles: bundles})
		if err != nil {
			return c.callError("create bundle token "+name, o, err)
		}
		if quiet {
			_, err := fmt.Fprintln(a.stdout, resp.Token)
			return err
		}
		r := toBundleTokenReport(resp.Info)
		r.Token = resp.Token
		if a.output == outputJSON {
			return writeJSON(a.stdout, r)
		}
		t := newTable(a.stdout, "")
		t.row("token", r.Token+"   (shown once)")
		t.row("id", r.ID)
		t.row("name", r.Name)
		t.row("bundles", r.bundles())
		t.row("expires", r.expires())
		return t.flush()
	})
	return cmd
}

func (a *app) newPolicyTokenListCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the bundle service's bearer tokens (never their secrets)",
		Long:  "list prints every bearer token of the OPA bundle service: ID, name, bundles, expiry. Secrets are not stored, so they cannot be shown." + opLong,
		Args:  cobra.NoArgs,
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.ListBundleTokens(ctx, &operatorpb.ListBundleTokensRequest{})
		if err != nil {
			return c.callError("list bundle tokens", o, err)
		}
		rs := make([]bundleTokenReport, len(resp.Tokens))
		for i, tok := range resp.Tokens {
			rs[i] = toBundleTokenReport(tok)
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, rs)
		}
		t := newTable(a.stdout, "")
		t.row("ID\tNAME\tBUNDLES\tCREATED\tAUTHOR", "EXPIRES")
		for _, r := range rs {
			t.row(fmt.Sprintf("%s\t%s\t%s\t%s\t%s", r.ID, r.Name, r.bundles(), r.Created.Format(time.RFC3339), r.Author), r.expires())
		}
		return t.flush()
	})
	return cmd
}

func (a *app) newPolicyTokenRevokeCommand() *cobra.Command {
	var (
		o    opOptions
		name string
	)
	cmd := &cobra.Command{
		Use:   "revoke ID | --name NAME",
		Short: "Revoke a bearer token of the bundle service",
		Long: `revoke removes a bearer token: from the next request on (long polls held
included), the bundle service refuses it with 401.` + opLong,
		Args: cobra.MaximumNArgs(1),
	}
	cmd.Flags().StringVar(&name, "name", "", "the token's name (instead of its ID)")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		if (len(args) == 1) == (name != "") {
			return usageErrorf("give the token's ID or --name, one of them")
		}
		req := &operatorpb.RevokeBundleTokenRequest{Name: name}
		if len(args) == 1 {
			req.Id = args[0]
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.RevokeBundleToken(ctx, req)
		if err != nil {
			return c.callError("revoke bundle token", o, err)
		}
		r := toBundleTokenReport(resp)
		if a.output == outputJSON {
			return writeJSON(a.stdout, r)
		}
		_, err = fmt.Fprintf(a.stdout, "revoked bundle token %s (%s)\n", r.ID, r.Name)
		return err
	})
	return cmd
}
