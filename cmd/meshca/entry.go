package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/spf13/cobra"
)

func (a *app) newEntryCommand() *cobra.Command {
	return groupCommand("entry", "Registration entries: which workloads get which SPIFFE IDs",
		a.newEntryCreateCommand(),
		a.newEntryListCommand(),
		a.newEntryShowCommand(),
		a.newEntryUpdateCommand(),
		a.newEntryDeleteCommand(),
	)
}

// entryLong is what every entry command's help says about entries.
const entryLong = `

A registration entry gives a SPIFFE ID to the workloads that match all of its
selectors, on the nodes of one agent (its parent ID):
  --spiffe-id ID     the workload's identity, spiffe://<trust domain>/<path>;
                     the /meshca/ path is reserved for servers and agents
  --parent-id ID     the agent that serves it, spiffe://<trust domain>/meshca/agent/...
                     (meshca node list shows the agents); it must be an attested
                     agent, a server, or the agent of a join token not used yet,
                     unless --allow-unknown-parent
  --selector S       type:key:value, repeated; a workload must match every one:
                     unix:uid:1000, unix:gid:50, unix:user:alice, unix:group:staff,
                     unix:path:/usr/bin/app, unix:sha256:<hex of the executable>,
                     k8s:ns:prod, k8s:sa:api, k8s:pod-label:app:web, ...
                     Values are checked by type, as the attestors produce them:
                     uid and gid decimal, path absolute and clean, sha256 64
                     lowercase hex digits, Kubernetes names as Kubernetes
                     allows them, no leading or trailing spaces.
  --ttl D            lifetime of the X509-SVIDs, 1m to 720h, whole seconds
                     (create's default: 24h)
  --dns NAME         a DNS SAN, repeated or comma-separated
  --profile P        ecdsa (P-256) or sm2 (SM2-with-SM3); create's default: ecdsa.
                     Standard Workload API clients get ecdsa SVIDs only; sm2
                     ones go to clients that ask (meshca workload fetch --profile sm2)
The server checks every entry and refuses a bad one with its reason, and an
exact duplicate (the same parent, SPIFFE ID and selectors as another entry).` + opLong

// entryFlags are the flags that describe an entry, shared by create and
// update.
type entryFlags struct {
	spiffeID, parentID string
	selectors          []string
	ttl                time.Duration
	dnsNames           []string
	profile            string
	allowUnknownParent bool
}

// addEntryFlags declares the entry flags. update's have no defaults: a flag
// not given keeps the entry's value.
func addEntryFlags(cmd *cobra.Command, f *entryFlags, update bool) {
	fs := cmd.Flags()
	ttl, profile, keep := server.DefaultEntryTTL, ca.ProfileECDSA, ""
	if update {
		ttl, profile, keep = 0, "", " (default: keep the entry's)"
	}
	fs.StringVar(&f.spiffeID, "spiffe-id", "", "SPIFFE ID the entry gives, spiffe://<trust domain>/<path>"+keep)
	fs.StringVar(&f.parentID, "parent-id", "", "SPIFFE ID of the agent whose workloads may get it"+keep)
	fs.StringArrayVar(&f.selectors, "selector", nil, "workload selector type:key:value, e.g. unix:uid:1000; repeat for more (all must match)"+keep)
	fs.DurationVar(&f.ttl, "ttl", ttl, "lifetime of the X509-SVIDs, whole seconds from 1m to 720h"+keep)
	fs.StringSliceVar(&f.dnsNames, "dns", nil, "DNS name to add as a SAN; repeat or separate with commas"+keep)
	fs.StringVar(&f.profile, "profile", profile, "signature profile: ecdsa or sm2"+keep)
	fs.BoolVar(&f.allowUnknownParent, "allow-unknown-parent", false, "accept a --parent-id that is no attested agent, server or agent of a pending join token (for an agent that attests later)")
}

// apply sets the fields of e whose flags were given (all of them when all
// is set), after checking what the command line alone can tell.
func (f *entryFlags) apply(cmd *cobra.Command, e *operatorpb.Entry, all bool) error {
	changed := func(name string) bool { return all || cmd.Flags().Changed(name) }
	if changed("spiffe-id") {
		e.SpiffeId = f.spiffeID
	}
	if changed("parent-id") {
		e.ParentId = f.parentID
	}
	if changed("selector") {
		e.Selectors = nil
		for _, s := range f.selectors {
			e.Selectors = append(e.Selectors, parseSelector(s))
		}
	}
	if changed("ttl") {
		switch {
		case f.ttl < time.Second:
			return usageErrorf("--ttl %s: want a positive lifetime, e.g. 24h", f.ttl)
		case f.ttl%time.Second != 0:
			return usageErrorf("--ttl %s: want whole seconds", f.ttl)
		}
		e.TtlSeconds = int64(f.ttl / time.Second)
	}
	if changed("dns") {
		e.DnsNames = f.dnsNames
	}
	if changed("profile") {
		e.Profile = f.profile
	}
	return nil
}

// parseSelector splits "type:key:value" at its first colon into the type
// and the value ("key:value"). The server checks selectors and says what is
// wrong with one, so nothing is refused here.
func parseSelector(s string) *operatorpb.Selector {
	typ, value, _ := strings.Cut(s, ":")
	return &operatorpb.Selector{Type: typ, Value: value}
}

// selectorReport is one selector as the operator API names its fields.
type selectorReport struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

func (s selectorReport) String() string { return s.Type + ":" + s.Value }

func selectorReports(ss []*operatorpb.Selector) []selectorReport {
	out := make([]selectorReport, 0, len(ss))
	for _, s := range ss {
		out = append(out, selectorReport{Type: s.Type, Value: s.Value})
	}
	return out
}

func joinSelectors(ss []selectorReport) string {
	parts := make([]string, len(ss))
	for i, s := range ss {
		parts[i] = s.String()
	}
	return strings.Join(parts, ",")
}

// entryReport is an entry as the entry commands print it; the JSON field
// names are those of the operator API's Entry.
type entryReport struct {
	ID          string           `json:"id"`
	SPIFFEID    string           `json:"spiffe_id"`
	ParentID    string           `json:"parent_id"`
	Selectors   []selectorReport `json:"selectors"`
	TTLSeconds  int64            `json:"ttl_seconds"`
	DNSNames    []string         `json:"dns_names"`
	Profile     string           `json:"profile"`
	Revision    uint64           `json:"revision"`
	Created     time.Time        `json:"created"`
	CreatedUnix int64            `json:"created_unix"`
}

func newEntryReport(e *operatorpb.Entry) entryReport {
	dns := e.DnsNames
	if dns == nil {
		dns = []string{}
	}
	return entryReport{
		ID: e.Id, SPIFFEID: e.SpiffeId, ParentID: e.ParentId, Selectors: selectorReports(e.Selectors),
		TTLSeconds: e.TtlSeconds, DNSNames: dns, Profile: e.Profile, Revision: e.Revision,
		Created: time.Unix(e.CreatedUnix, 0).UTC(), CreatedUnix: e.CreatedUnix,
	}
}

func (r entryReport) ttl() time.Duration { return time.Duration(r.TTLSeconds) * time.Second }

// printEntry writes one entry, as JSON or as a table.
func (a *app) printEntry(e *operatorpb.Entry) error {
	r := newEntryReport(e)
	if a.output == outputJSON {
		return writeJSON(a.stdout, r)
	}
	t := newTable(a.stdout, "")
	t.row("ID", r.ID)
	t.row("SPIFFE ID", r.SPIFFEID)
	t.row("parent ID", r.ParentID)
	for _, s := range r.Selectors {
		t.row("selector", s)
	}
	t.row("TTL", r.ttl())
	for _, n := range r.DNSNames {
		t.row("DNS name", n)
	}
	t.row("profile", r.Profile)
	t.row("revision", r.Revision)
	t.row("created", r.Created.Format(time.RFC3339))
	return t.flush()
}

func (a *app) newEntryCreateCommand() *cobra.Command {
	var (
		o            opOptions
		f            entryFlags
		file         string
		batchSize    int
		skipExisting bool
	)
	cmd := &cobra.Command{
		Use: "create --spiffe-id ID --parent-id ID --selector type:key:value... [--ttl 24h] [--dns NAME]... [--profile ecdsa|sm2] [--allow-unknown-parent]\n" +
			"  meshca entry create --file entries.json [--batch-size 100] [--skip-existing] [--allow-unknown-parent]",
		Short: "Create a registration entry, or many from a file",
		Long:  `create adds a registration entry and prints it, with the ID and revision the server gave it.` + entryLong + entryFileLong,
		Example: `  meshca entry create --spiffe-id spiffe://meshca.local/ns/prod/sa/api \
      --parent-id spiffe://meshca.local/meshca/agent/join_token/3f2a... \
      --selector unix:uid:1000 --selector unix:path:/usr/local/bin/api --dns api.prod.svc
  meshca entry create --file entries.json --batch-size 200
  kubectl -n meshca exec -i meshca-0 -- meshca entry create --file - --skip-existing \
      --addr unix:///var/lib/meshca/admin.sock < entries.json`,
		Args: cobra.NoArgs,
		// Use lists the flags already.
		DisableFlagsInUseLine: true,
	}
	addEntryFlags(cmd, &f, false)
	cmd.Flags().StringVar(&file, "file", "", "create the entries of this JSON file (SPIRE's -data shape; - for standard input) in batches")
	cmd.Flags().IntVar(&batchSize, "batch-size", defaultEntryBatch, "with --file: entries per batch, each created whole or not at all (1 to 500)")
	cmd.Flags().BoolVar(&skipExisting, "skip-existing", false, "with --file: leave out entries that exactly repeat an existing one, instead of refusing their batch")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		if file != "" {
			for _, name := range []string{"spiffe-id", "parent-id", "selector", "ttl", "dns", "profile"} {
				if cmd.Flags().Changed(name) {
					return usageErrorf("--%s: with --file, every entry is described in the file", name)
				}
			}
			return a.createEntriesFromFile(cmd, o, file, batchSize, skipExisting, f.allowUnknownParent)
		}
		if cmd.Flags().Changed("batch-size") || skipExisting {
			return usageErrorf("--batch-size and --skip-existing are used with --file")
		}
		var missing []string
		for _, name := range []string{"spiffe-id", "parent-id", "selector"} {
			if !cmd.Flags().Changed(name) {
				missing = append(missing, `"`+name+`"`)
			}
		}
		if len(missing) > 0 {
			return usageErrorf("required flag(s) %s not set (or give --file, for many entries)", strings.Join(missing, ", "))
		}
		e := &operatorpb.Entry{}
		if err := f.apply(cmd, e, true); err != nil {
			return err
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.CreateEntry(ctx, &operatorpb.CreateEntryRequest{Entry: e, AllowUnknownParent: f.allowUnknownParent})
		if err != nil {
			return c.callError("create entry for "+e.SpiffeId, o, err)
		}
		return a.printEntry(resp.Entry)
	})
	return cmd
}

func (a *app) newEntryListCommand() *cobra.Command {
	var (
		o                  opOptions
		parentID, spiffeID string
		pageSize           uint32
	)
	cmd := &cobra.Command{
		Use:   "list [--parent-id ID] [--spiffe-id ID]",
		Short: "List registration entries",
		Long: `list prints the registration entries, optionally only those of one parent
(agent) and one SPIFFE ID. The table shows each entry's ID, SPIFFE ID, parent
ID, selectors, TTL, profile and revision; --output json shows every field.
Entries come in the order of their IDs, fetched --page-size at a time (each
page one call, bounded by --timeout); the table is printed page by page. A
listing of a changing set is not a snapshot: entries created or deleted
while it runs may be missed.` + opLong,
		Args: cobra.NoArgs,
	}
	cmd.Flags().StringVar(&parentID, "parent-id", "", "only entries of this parent (agent) SPIFFE ID")
	cmd.Flags().StringVar(&spiffeID, "spiffe-id", "", "only entries giving this SPIFFE ID")
	cmd.Flags().Uint32Var(&pageSize, "page-size", defaultEntryPage, "entries per call to the server (1 to 1000)")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		if pageSize < 1 || pageSize > server.MaxEntriesPage {
			return usageErrorf("--page-size %d: want 1 to %d", pageSize, server.MaxEntriesPage)
		}
		if err := checkTimeout(o); err != nil {
			return err
		}
		c, err := a.dialOperator(o)
		if err != nil {
			return err
		}
		defer c.Close()
		entries := []entryReport{}
		tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
		if a.output != outputJSON {
			fmt.Fprintln(tw, "ID\tSPIFFE ID\tPARENT ID\tSELECTORS\tTTL\tPROFILE\tREVISION")
		}
		for token, page := "", 1; ; page++ {
			ctx, cancel := callContext(cmd.Context(), o)
			resp, err := c.ListEntries(ctx, &operatorpb.ListEntriesRequest{ParentId: parentID, SpiffeId: spiffeID, PageSize: pageSize, PageToken: token})
			cancel()
			if err != nil {
				return c.callError(fmt.Sprintf("list entries (page %d)", page), o, err)
			}
			for _, e := range resp.Entries {
				r := newEntryReport(e)
				if a.output == outputJSON {
					entries = append(entries, r)
				} else {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\n", r.ID, r.SPIFFEID, r.ParentID, joinSelectors(r.Selectors), r.ttl(), r.Profile, r.Revision)
				}
			}
			if a.output != outputJSON {
				if err := tw.Flush(); err != nil {
					return fmt.Errorf("write output: %w", err)
				}
			}
			if token = resp.NextPageToken; token == "" {
				break
			}
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, struct {
				Entries []entryReport `json:"entries"`
			}{entries})
		}
		return nil
	})
	return cmd
}

func (a *app) newEntryShowCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show a registration entry",
		Long:  `show prints one registration entry, found by the ID "entry list" shows.` + opLong,
		Args:  cobra.ExactArgs(1),
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.GetEntry(ctx, &operatorpb.GetEntryRequest{Id: args[0]})
		if err != nil {
			return c.callError("show entry "+args[0], o, err)
		}
		return a.printEntry(resp.Entry)
	})
	return cmd
}

func (a *app) newEntryUpdateCommand() *cobra.Command {
	var (
		o        opOptions
		f        entryFlags
		revision uint64
	)
	cmd := &cobra.Command{
		Use:   "update ID --revision R [--spiffe-id ID] [--parent-id ID] [--selector S]... [--ttl D] [--dns NAME]... [--profile P]",
		Short: "Change a registration entry",
		Long: `update changes the fields of entry ID whose flags are given and keeps the
others. --selector and --dns replace the whole list (--dns "" removes every
DNS name).

--revision is the revision the change is based on, as "entry show" printed it:
if the entry changed since, the server refuses the update rather than overwrite
that change; show the entry again and retry.` + entryLong,
		Args: cobra.ExactArgs(1),
		// Use lists the flags already.
		DisableFlagsInUseLine: true,
	}
	addEntryFlags(cmd, &f, true)
	cmd.Flags().Uint64Var(&revision, "revision", 0, "the entry's current revision, from entry show (required)")
	addOpFlags(cmd, &o)
	if err := cmd.MarkFlagRequired("revision"); err != nil {
		panic(err) // the flag is declared just above
	}
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		id := args[0]
		if err := f.apply(cmd, &operatorpb.Entry{}, false); err != nil {
			return err
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		cur, err := c.GetEntry(ctx, &operatorpb.GetEntryRequest{Id: id})
		if err != nil {
			return c.callError("update entry "+id, o, err)
		}
		e := cur.Entry
		if err := f.apply(cmd, e, false); err != nil {
			return err
		}
		e.Revision = revision
		resp, err := c.UpdateEntry(ctx, &operatorpb.UpdateEntryRequest{Entry: e, AllowUnknownParent: f.allowUnknownParent})
		if err != nil {
			return c.callError("update entry "+id, o, err)
		}
		return a.printEntry(resp.Entry)
	})
	return cmd
}

func (a *app) newEntryDeleteCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a registration entry",
		Long: `delete removes entry ID. The servers tell the agents at once, and the agents
stop serving its SVIDs; certificates already issued under it stay valid until
they expire (at most the entry's TTL).` + opLong,
		Args: cobra.ExactArgs(1),
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		if _, err := c.DeleteEntry(ctx, &operatorpb.DeleteEntryRequest{Id: args[0]}); err != nil {
			return c.callError("delete entry "+args[0], o, err)
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, struct {
				ID      string `json:"id"`
				Deleted bool   `json:"deleted"`
			}{args[0], true})
		}
		fmt.Fprintf(a.stdout, "deleted entry %s\n", args[0])
		return nil
	})
	return cmd
}
