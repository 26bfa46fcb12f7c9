package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/pmezard/go-difflib/difflib"
	"github.com/spf13/cobra"
)

// issue 12: meshca policy (issuance policy and OPA authorization bundles)
// and meshca bundle show --opa-key.

func (a *app) newPolicyCommand() *cobra.Command {
	issuance := groupCommand("issuance", "The issuance policy: which identity a node or workload may obtain",
		a.newPolicyIssuanceSetCommand(), a.newPolicyIssuanceShowCommand(), a.newPolicyIssuanceTestCommand())
	return groupCommand("policy", "OPA policy: issuance decisions and signed authorization bundles",
		issuance, a.newPolicyPushCommand(), a.newPolicyListCommand(), a.newPolicyShowCommand(),
		a.newPolicyDiffCommand(), a.newPolicyRollbackCommand(), a.newPolicyTokenCommand())
}

func toPBFiles(fs []policy.File) []*operatorpb.PolicyFile {
	out := make([]*operatorpb.PolicyFile, len(fs))
	for i, f := range fs {
		out[i] = &operatorpb.PolicyFile{Path: f.Path, Content: f.Content}
	}
	return out
}

func fromPBFiles(fs []*operatorpb.PolicyFile) []policy.File {
	out := make([]policy.File, len(fs))
	for i, f := range fs {
		out[i] = policy.File{Path: f.Path, Content: f.Content}
	}
	return out
}

const issuanceSetLong = `set compiles an issuance policy and stores it, through Raft, as the next
revision; every server compiles it once and from then on asks it on every
issuance (agent SVIDs, workload SVIDs, JWT-SVIDs, operator mints).

The policy is a Rego v1 file, or a directory of .rego files and data.json
files, defining package meshca.issuance. The decision data.meshca.issuance
is an object {allow, reason, spiffe_id?, ttl?, dns_names?}; its input:

  {"node": {"id", "attestor", "selectors": [{"type", "value"}]},
   "workload": {"selectors": [...]},
   "entry": {"id", "spiffe_id", "parent_id", "selectors", "dns_names", "ttl", "profile"},  (absent: no entry)
   "request": {"spiffe_id", "dns_names", "ttl", "profile", "kind"},   (kind: agent_svid, workload_svid, jwt_svid, mint; ttl in seconds)
   "entries": {"allow", "reason"}}   (what registration-entry matching decided)

Only those five rules are read, allow first, then spiffe_id, ttl and
dns_names, and reason only when allow is not true; other rules of the
package are evaluated where they use them, at most once per decision for a
complete rule (a function with arguments is evaluated again at every
call). A policy that keeps entries and adds a rule says "allow if
input.entries.allow" and more. A deny returns reason to the caller
(PermissionDenied) and audits it. A policy that fails at evaluation (a
conflict, a builtin error) denies.

Each server remembers up to --issuance-decision-cache (default 16384)
decisions by the input fields the policy names, so a renewal of an
unchanged workload is not evaluated again; never for a policy that calls
time.now_ns, http.send, rand.intn or another nondeterministic builtin, or
verifies certificates against the current time. A
new revision starts with none. The audit trail records each issuance as
before, whether its decision was remembered or evaluated.

A policy that does not parse, refers to an input field that does not exist,
or defines no data.meshca.issuance is refused with file:line errors, and
the current revision stays. --clear removes the policy: registration entries
decide alone again.` + opLong

func (a *app) newPolicyIssuanceSetCommand() *cobra.Command {
	var (
		o     opOptions
		clear bool
	)
	cmd := &cobra.Command{
		Use:   "set FILE.rego|DIR | --clear",
		Short: "Set the issuance policy (or --clear it)",
		Long:  issuanceSetLong,
		Args:  cobra.MaximumNArgs(1),
	}
	cmd.Flags().BoolVar(&clear, "clear", false, "remove the issuance policy: registration entries decide alone")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		if clear == (len(args) == 1) {
			return usageErrorf("give a policy file or directory, or --clear")
		}
		var files []policy.File
		if !clear {
			var err error
			if files, err = policy.ReadFiles(args[0], 0); err != nil {
				return err
			}
			p, err := policy.CompileIssuance(cmd.Context(), 0, files)
			if err != nil {
				return err
			}
			if err := p.SelfTest(cmd.Context()); err != nil {
				return err
			}
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.SetIssuancePolicy(ctx, &operatorpb.SetIssuancePolicyRequest{Files: toPBFiles(files)})
		if err != nil {
			return c.callError("set the issuance policy", o, err)
		}
		return a.printIssuancePolicy(resp, false)
	})
	return cmd
}

type issuanceReport struct {
	Revision uint64            `json:"revision"`
	Author   string            `json:"author,omitempty"`
	Created  *time.Time        `json:"created,omitempty"`
	Files    []string          `json:"files"`
	Sources  map[string]string `json:"sources,omitempty"`
}

func (a *app) printIssuancePolicy(resp *operatorpb.IssuancePolicyResponse, sources bool) error {
	r := issuanceReport{Revision: resp.Revision, Author: resp.Author, Files: []string{}}
	if resp.CreatedUnix != 0 {
		t := time.Unix(resp.CreatedUnix, 0).UTC()
		r.Created = &t
	}
	for _, f := range resp.Files {
		r.Files = append(r.Files, f.Path)
		if sources {
			if r.Sources == nil {
				r.Sources = map[string]string{}
			}
			r.Sources[f.Path] = string(f.Content)
		}
	}
	if a.output == outputJSON {
		return writeJSON(a.stdout, r)
	}
	t := newTable(a.stdout, "")
	t.row("revision", r.Revision)
	switch {
	case r.Revision == 0:
		t.row("policy", "none: registration entries decide")
	case len(r.Files) == 0:
		t.row("policy", "removed: registration entries decide")
	default:
		t.row("files", strings.Join(r.Files, ", "))
	}
	if r.Created != nil {
		t.row("set", fmt.Sprintf("%s by %s", r.Created.Format(time.RFC3339), r.Author))
	}
	if err := t.flush(); err != nil {
		return err
	}
	if sources {
		for _, f := range resp.Files {
			fmt.Fprintf(a.stdout, "\n--- %s\n%s", f.Path, f.Content)
		}
	}
	return nil
}

func (a *app) newPolicyIssuanceShowCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show the current issuance policy and its sources",
		Long:  "show prints the current issuance policy revision, who set it and when, and its files." + opLong,
		Args:  cobra.NoArgs,
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.GetIssuancePolicy(ctx, &operatorpb.GetIssuancePolicyRequest{})
		if err != nil {
			return c.callError("show the issuance policy", o, err)
		}
		return a.printIssuancePolicy(resp, true)
	})
	return cmd
}

const issuanceTestLong = `test evaluates an issuance policy on a sample input and prints the decision,
as opa eval would: the policy of FILE.rego or DIR if given, else the
server's current one (fetched; evaluated here). The input file is the JSON
input of data.meshca.issuance (see meshca policy issuance set --help); an
unknown field is an error. An evaluation error is printed as the deny it
causes.` + opLong

func (a *app) newPolicyIssuanceTestCommand() *cobra.Command {
	var (
		o     opOptions
		input string
	)
	cmd := &cobra.Command{
		Use:   "test --input F [FILE.rego|DIR]",
		Short: "Evaluate an issuance policy on a sample input",
		Long:  issuanceTestLong,
		Args:  cobra.MaximumNArgs(1),
	}
	cmd.Flags().StringVar(&input, "input", "", "JSON file with the policy's input")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		if input == "" {
			return usageErrorf("--input is required")
		}
		raw, err := os.ReadFile(input)
		if err != nil {
			return err
		}
		var in policy.Input
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			return fmt.Errorf("--input %s: %w", input, err)
		}
		var files []policy.File
		var rev uint64
		if len(args) == 1 {
			if files, err = policy.ReadFiles(args[0], 0); err != nil {
				return err
			}
		} else {
			ctx, c, done, err := a.operatorCall(cmd, o)
			if err != nil {
				return err
			}
			resp, err := c.GetIssuancePolicy(ctx, &operatorpb.GetIssuancePolicyRequest{})
			done()
			if err != nil {
				return c.callError("fetch the issuance policy", o, err)
			}
			if len(resp.Files) == 0 {
				return fmt.Errorf("the server has no issuance policy: registration entries decide (input.entries is their decision)")
			}
			files, rev = fromPBFiles(resp.Files), resp.Revision
		}
		p, err := policy.CompileIssuance(cmd.Context(), rev, files)
		if err != nil {
			return err
		}
		d, err := p.Decide(cmd.Context(), &in)
		if err != nil {
			d = policy.Decision{Reason: err.Error()}
		}
		type out struct {
			policy.Decision
			TTL int64 `json:"ttl,omitempty"`
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, out{Decision: d, TTL: int64(d.TTL / time.Second)})
		}
		t := newTable(a.stdout, "")
		t.row("allow", d.Allow)
		if d.Reason != "" {
			t.row("reason", d.Reason)
		}
		if d.SPIFFEID != "" {
			t.row("spiffe_id", d.SPIFFEID)
		}
		if d.TTL != 0 {
			t.row("ttl", d.TTL)
		}
		if d.DNSNames != nil {
			t.row("dns_names", strings.Join(d.DNSNames, ", "))
		}
		return t.flush()
	})
	return cmd
}

const pushLong = `push reads the .rego and data.json files of DIR (recursively; *_test.rego and
hidden files skipped), parses and compiles them (Rego v1; a data.json must be
a JSON object and sits at its directory's path), builds an OPA bundle whose
.manifest carries the next revision, the roots (the first segment of every
package and data path) and rego_version 1, signs it in OPA's bundle
signature format with the trust domain's ES256 key, and stores it through
Raft. Invalid input is refused with file:line errors and nothing is stored.
The bundle is bounded in size (the server's limit, 4 MiB by default); the
newest revisions of each name are kept (16 by default).

Every server serves the latest revision to OPA over its bundle service
(meshca server --bundle-addr): GET <url>/bundles/NAME, with ETags and long
polling. Give OPA the key of meshca bundle show --opa-key and a signing
block. Example OPA configuration:

  services: {meshca: {url: https://localhost:8443/v1, tls: {ca_cert: bundle.pem},
             credentials: {client_tls: {cert: svid.pem, private_key: key.pem}}}}
  bundles:  {authz: {service: meshca, resource: bundles/authz, signing: {keyid: <kid>},
             polling: {long_polling_timeout_seconds: 60}}}
  keys:     {<kid>: {algorithm: ES256, key: "<public key PEM>"}}` + opLong

func (a *app) newPolicyPushCommand() *cobra.Command {
	var (
		o    opOptions
		name string
	)
	cmd := &cobra.Command{
		Use:   "push DIR --name NAME",
		Short: "Build, sign and publish an OPA authorization bundle",
		Long:  pushLong,
		Args:  cobra.ExactArgs(1),
	}
	cmd.Flags().StringVar(&name, "name", "", "the bundle's name (OPA's bundles/NAME resource)")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		if err := policy.CheckName(name); err != nil {
			return usageErrorf("--name: %v", err)
		}
		files, err := policy.ReadFiles(args[0], policy.DefaultMaxSize)
		if err != nil {
			return err
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: name, Files: toPBFiles(files)})
		if err != nil {
			return c.callError("push bundle "+name, o, err)
		}
		return a.printBundles([]*operatorpb.BundleInfo{resp.Info})
	})
	return cmd
}

type bundleReport struct {
	Name       string    `json:"name"`
	Revision   uint64    `json:"revision"`
	SHA256     string    `json:"sha256"`
	Size       uint64    `json:"size"`
	Created    time.Time `json:"created"`
	Author     string    `json:"author"`
	RollbackOf uint64    `json:"rollback_of,omitempty"`
	KeyID      string    `json:"kid"`
	Files      []string  `json:"files"`
}

func toBundleReport(b *operatorpb.BundleInfo) bundleReport {
	return bundleReport{Name: b.Name, Revision: b.Revision, SHA256: b.Sha256, Size: b.Size, Created: time.Unix(b.CreatedUnix, 0).UTC(),
		Author: b.Author, RollbackOf: b.RollbackOf, KeyID: b.Kid, Files: b.Files}
}

func (a *app) printBundles(bs []*operatorpb.BundleInfo) error {
	rs := make([]bundleReport, len(bs))
	for i, b := range bs {
		rs[i] = toBundleReport(b)
	}
	if a.output == outputJSON {
		return writeJSON(a.stdout, rs)
	}
	t := newTable(a.stdout, "")
	t.row("NAME\tREVISION\tSIZE\tCREATED\tAUTHOR\tSHA256", "NOTE")
	for _, r := range rs {
		note := ""
		if r.RollbackOf != 0 {
			note = fmt.Sprintf("rollback to %d", r.RollbackOf)
		}
		t.row(fmt.Sprintf("%s\t%d\t%d\t%s\t%s\t%.16s", r.Name, r.Revision, r.Size, r.Created.Format(time.RFC3339), r.Author, r.SHA256), note)
	}
	return t.flush()
}

func (a *app) newPolicyListCommand() *cobra.Command {
	var (
		o    opOptions
		name string
	)
	cmd := &cobra.Command{
		Use:   "list [--name NAME]",
		Short: "List the bundles, or one bundle's kept revisions",
		Long:  "list prints every bundle's latest revision, or with --name the kept revisions of one bundle." + opLong,
		Args:  cobra.NoArgs,
	}
	cmd.Flags().StringVar(&name, "name", "", "list this bundle's revisions")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.ListBundles(ctx, &operatorpb.ListBundlesRequest{Name: name})
		if err != nil {
			return c.callError("list bundles", o, err)
		}
		return a.printBundles(resp.Bundles)
	})
	return cmd
}

func (a *app) getBundle(ctx context.Context, c *opClient, o opOptions, name string, rev uint64) (*operatorpb.BundleResponse, error) {
	resp, err := c.GetBundle(ctx, &operatorpb.GetBundleRequest{Name: name, Revision: rev})
	if err != nil {
		return nil, c.callError(fmt.Sprintf("bundle %s revision %d", name, rev), o, err)
	}
	return resp, nil
}

func (a *app) newPolicyShowCommand() *cobra.Command {
	var (
		o    opOptions
		name string
		rev  uint64
		out  string
	)
	cmd := &cobra.Command{
		Use:   "show --name NAME [--revision N] [--out FILE.tar.gz]",
		Short: "Show a bundle revision and its sources",
		Long:  "show prints one revision of a bundle (default: the latest) and its source files; --out also writes the signed bundle as OPA gets it." + opLong,
		Args:  cobra.NoArgs,
	}
	cmd.Flags().StringVar(&name, "name", "", "the bundle")
	cmd.Flags().Uint64Var(&rev, "revision", 0, "the revision (default: the latest)")
	cmd.Flags().StringVar(&out, "out", "", "write the signed bundle to this file")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		if name == "" {
			return usageErrorf("--name is required")
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := a.getBundle(ctx, c, o, name, rev)
		if err != nil {
			return err
		}
		if out != "" {
			if err := os.WriteFile(out, resp.Bundle, 0o644); err != nil {
				return err
			}
		}
		if a.output == outputJSON {
			src := map[string]string{}
			for _, f := range resp.Files {
				src[f.Path] = string(f.Content)
			}
			return writeJSON(a.stdout, struct {
				bundleReport
				Sources map[string]string `json:"sources"`
			}{toBundleReport(resp.Info), src})
		}
		if err := a.printBundles([]*operatorpb.BundleInfo{resp.Info}); err != nil {
			return err
		}
		for _, f := range resp.Files {
			fmt.Fprintf(a.stdout, "\n--- %s\n%s", f.Path, f.Content)
		}
		return nil
	})
	return cmd
}

// diffFiles is a unified diff of two revisions' files.
func diffFiles(name string, from, to *operatorpb.BundleResponse) (string, error) {
	files := map[string][2]string{}
	for _, f := range from.Files {
		v := files[f.Path]
		v[0] = string(f.Content)
		files[f.Path] = v
	}
	for _, f := range to.Files {
		v := files[f.Path]
		v[1] = string(f.Content)
		files[f.Path] = v
	}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var b strings.Builder
	for _, p := range paths {
		v := files[p]
		if v[0] == v[1] {
			continue
		}
		d, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
			A: difflib.SplitLines(v[0]), B: difflib.SplitLines(v[1]),
			FromFile: fmt.Sprintf("%s@%d/%s", name, from.Info.Revision, p), ToFile: fmt.Sprintf("%s@%d/%s", name, to.Info.Revision, p), Context: 3,
		})
		if err != nil {
			return "", err
		}
		b.WriteString(d)
		if !strings.HasSuffix(d, "\n") {
			b.WriteString("\n")
		}
	}
	return b.String(), nil
}

func (a *app) newPolicyDiffCommand() *cobra.Command {
	var (
		o        opOptions
		name     string
		from, to uint64
	)
	cmd := &cobra.Command{
		Use:   "diff --name NAME [--from N] [--to M]",
		Short: "Diff the sources of two revisions of a bundle",
		Long:  "diff prints a unified diff of the source files of two revisions of a bundle: by default the one before the latest, and the latest." + opLong,
		Args:  cobra.NoArgs,
	}
	cmd.Flags().StringVar(&name, "name", "", "the bundle")
	cmd.Flags().Uint64Var(&from, "from", 0, "the older revision (default: the one before --to)")
	cmd.Flags().Uint64Var(&to, "to", 0, "the newer revision (default: the latest)")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		if name == "" {
			return usageErrorf("--name is required")
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		newer, err := a.getBundle(ctx, c, o, name, to)
		if err != nil {
			return err
		}
		if from == 0 {
			if newer.Info.Revision < 2 {
				return fmt.Errorf("bundle %s has only revision %d: give --from", name, newer.Info.Revision)
			}
			from = newer.Info.Revision - 1
		}
		older, err := a.getBundle(ctx, c, o, name, from)
		if err != nil {
			return err
		}
		d, err := diffFiles(name, older, newer)
		if err != nil {
			return err
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, map[string]any{"name": name, "from": from, "to": newer.Info.Revision, "diff": d})
		}
		_, err = fmt.Fprint(a.stdout, d)
		return err
	})
	return cmd
}

func (a *app) newPolicyRollbackCommand() *cobra.Command {
	var (
		o    opOptions
		name string
		rev  uint64
	)
	cmd := &cobra.Command{
		Use:   "rollback --name NAME --revision N",
		Short: "Publish an earlier revision's content as a new revision",
		Long: `rollback rebuilds and signs the sources of revision N as the next revision
(revisions only go up, so OPA's ETag and SDS versions move forward), and
publishes it like a push.` + opLong,
		Args: cobra.NoArgs,
	}
	cmd.Flags().StringVar(&name, "name", "", "the bundle")
	cmd.Flags().Uint64Var(&rev, "revision", 0, "the earlier revision to publish again")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		if name == "" || rev == 0 {
			return usageErrorf("--name and --revision are required")
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.RollbackBundle(ctx, &operatorpb.RollbackBundleRequest{Name: name, Revision: rev})
		if err != nil {
			return c.callError("roll back bundle "+name, o, err)
		}
		return a.printBundles([]*operatorpb.BundleInfo{resp.Info})
	})
	return cmd
}

func (a *app) newBundleCommand() *cobra.Command {
	return groupCommand("bundle", "The trust domain's published keys", a.newBundleShowCommand())
}

func (a *app) newBundleShowCommand() *cobra.Command {
	var (
		o      opOptions
		opaKey bool
		out    string
	)
	cmd := &cobra.Command{
		Use:   "show --opa-key [--out FILE]",
		Short: "Show the OPA bundle verification key",
		Long: `show --opa-key prints the public key (PEM) that verifies the trust domain's OPA
bundles, and its key ID: put both in OPA's keys configuration and name the
key ID in the bundle's signing block (see meshca policy push --help). The key
is made on first use and kept, sealed, in the replicated state.` + opLong,
		Args: cobra.NoArgs,
	}
	cmd.Flags().BoolVar(&opaKey, "opa-key", false, "show the OPA bundle signing key's public key")
	cmd.Flags().StringVar(&out, "out", "", "also write the PEM to this file")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		if !opaKey {
			return usageErrorf("--opa-key is required (the trust bundle is in the server's data directory: server/bundle.pem)")
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.GetOPAKey(ctx, &operatorpb.GetOPAKeyRequest{})
		if err != nil {
			return c.callError("the OPA key", o, err)
		}
		if out != "" {
			if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(out, []byte(resp.PublicKeyPem), 0o644); err != nil {
				return err
			}
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, map[string]string{"kid": resp.Kid, "algorithm": resp.Algorithm, "public_key_pem": resp.PublicKeyPem})
		}
		fmt.Fprintf(a.stdout, "# kid: %s\n# algorithm: %s\n%s", resp.Kid, resp.Algorithm, resp.PublicKeyPem)
		return nil
	})
	return cmd
}
