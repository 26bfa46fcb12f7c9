package main

import (
	"fmt"
	"io"
	"os"

	"github.com/meshca/meshca/internal/entryfile"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// Bulk creation defaults (issue 16a).
const (
	defaultEntryBatch = 100
	defaultEntryPage  = 500
)

// entryFileLong is what entry create --help says about --file.
const entryFileLong = `

Many entries at once: --file F (- for standard input) reads a JSON file in the
shape of SPIRE's "spire-server entry create -data":
  {"entries": [{"spiffe_id": "spiffe://example.org/ns/prod/sa/api",
                "parent_id": "spiffe://example.org/meshca/agent/...",
                "selectors": [{"type": "k8s", "value": "ns:prod"}, {"type": "k8s", "value": "sa:api"}],
                "x509_svid_ttl": 3600, "dns_names": ["api.prod.svc"], "profile": "ecdsa"}]}
x509_svid_ttl (or SPIRE's ttl) is in seconds, 0 or absent for 24h; profile is
meshca's (default ecdsa). SPIRE fields meshca has no counterpart for (admin,
downstream, federates_with, jwt_svid_ttl, entry_id, ...) must be absent or
zero; any other key is an error. The whole file is read and checked first.
The entries are then created in batches of --batch-size (at most 500): each
batch is one Raft command, created whole or not at all, and a refused batch
stops the command, naming the entry; the batches before it stay created.
--skip-existing leaves out entries that exactly repeat an existing one (same
parent, SPIFFE ID and selectors), so that an interrupted import can simply be
run again. Progress is a bar on a terminal, one line per batch otherwise, and
a summary at the end (--output json: the summary as JSON, with every created
entry's ID).`

// bulkSummary is what entry create --file reports.
type bulkSummary struct {
	File      string           `json:"file"`
	Entries   int              `json:"entries"`
	Created   int              `json:"created"`
	Skipped   int              `json:"skipped"`
	Batches   int              `json:"batches"`
	BatchSize int              `json:"batch_size"`
	Failed    *bulkFailure     `json:"failed,omitempty"`
	IDs       []string         `json:"ids"`
	Existing  []bulkSkipReport `json:"existing"`
}

type bulkFailure struct {
	Batch int    `json:"batch"`
	First int    `json:"first_entry"`
	Last  int    `json:"last_entry"`
	Error string `json:"error"`
}

type bulkSkipReport struct {
	Entry      int    `json:"entry"`
	ExistingID string `json:"existing_id"`
}

// readEntryFile reads --file: a path, or - for in.
func readEntryFile(path string, in io.Reader) ([]*operatorpb.Entry, error) {
	if path == "-" {
		es, err := entryfile.Parse(in)
		if err != nil {
			return nil, usageErrorf("--file -: %v", err)
		}
		return es, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--file: %w", err)
	}
	defer f.Close()
	es, err := entryfile.Parse(f)
	if err != nil {
		return nil, usageErrorf("--file %s: %v", path, err)
	}
	return es, nil
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// createEntriesFromFile runs entry create --file.
func (a *app) createEntriesFromFile(cmd *cobra.Command, o opOptions, path string, batch int, skipExisting, allowUnknownParent bool) error {
	if batch < 1 || batch > server.MaxBatchEntries {
		return usageErrorf("--batch-size %d: want 1 to %d", batch, server.MaxBatchEntries)
	}
	entries, err := readEntryFile(path, cmd.InOrStdin())
	if err != nil {
		return err
	}
	if err := checkTimeout(o); err != nil {
		return err
	}
	c, err := a.dialOperator(o)
	if err != nil {
		return err
	}
	defer c.Close()

	sum := bulkSummary{File: path, Entries: len(entries), BatchSize: batch, IDs: []string{}, Existing: []bulkSkipReport{}}
	batches := (len(entries) + batch - 1) / batch
	var bar *progressbar.ProgressBar
	if a.output != outputJSON && isTerminal(a.stderr) {
		bar = progressbar.NewOptions(len(entries), progressbar.OptionSetWriter(a.stderr), progressbar.OptionSetDescription("creating entries"),
			progressbar.OptionShowCount(), progressbar.OptionSetPredictTime(true))
	}
	for b := 0; b < batches; b++ {
		first, last := b*batch, min((b+1)*batch, len(entries))-1
		ctx, cancel := callContext(cmd.Context(), o)
		resp, err := c.BatchCreateEntries(ctx, &operatorpb.BatchCreateEntriesRequest{Entries: entries[first : last+1],
			AllowUnknownParent: allowUnknownParent, SkipExisting: skipExisting})
		cancel()
		if err != nil {
			err = c.callError(fmt.Sprintf("batch %d of %d, entries %d to %d of the file (the server counts from the batch's first)", b+1, batches, first, last), o, err)
			sum.Failed = &bulkFailure{Batch: b + 1, First: first, Last: last, Error: err.Error()}
			if bar != nil {
				bar.Exit()
				fmt.Fprintln(a.stderr)
			}
			a.printBulkSummary(sum)
			return err
		}
		for _, e := range resp.Entries {
			sum.IDs = append(sum.IDs, e.Id)
		}
		for k, pos := range resp.Skipped {
			id := ""
			if k < len(resp.ExistingIds) {
				id = resp.ExistingIds[k]
			}
			sum.Existing = append(sum.Existing, bulkSkipReport{Entry: first + int(pos), ExistingID: id})
		}
		sum.Created += len(resp.Entries)
		sum.Skipped += len(resp.Skipped)
		sum.Batches++
		switch {
		case bar != nil:
			bar.Add(last - first + 1)
		case a.output != outputJSON:
			fmt.Fprintf(a.stderr, "batch %d/%d: entries %d to %d: %d created, %d skipped (%d of %d done)\n",
				b+1, batches, first, last, len(resp.Entries), len(resp.Skipped), last+1, len(entries))
		}
	}
	if bar != nil {
		bar.Finish()
		fmt.Fprintln(a.stderr)
	}
	return a.printBulkSummary(sum)
}

// printBulkSummary writes the summary: JSON to stdout with --output json,
// else a line to stdout.
func (a *app) printBulkSummary(s bulkSummary) error {
	if a.output == outputJSON {
		return writeJSON(a.stdout, s)
	}
	status := "done"
	if s.Failed != nil {
		status = fmt.Sprintf("stopped at batch %d (entries %d to %d, none of them created); entries before it are created; fix the file and run again with --skip-existing", s.Failed.Batch, s.Failed.First, s.Failed.Last)
	}
	fmt.Fprintf(a.stdout, "%d of %d entries created, %d skipped as existing, in %d batches of up to %d: %s\n",
		s.Created, s.Entries, s.Skipped, s.Batches, s.BatchSize, status)
	return nil
}
