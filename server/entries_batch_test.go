package server

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/meshca/meshca/proto/operatorpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func batchOf(parent string, from, n int) []*operatorpb.Entry {
	var es []*operatorpb.Entry
	for i := from; i < from+n; i++ {
		es = append(es, &operatorpb.Entry{SpiffeId: fmt.Sprintf("spiffe://example.org/w/%d", i), ParentId: parent,
			Selectors: []*operatorpb.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", 1000+i)}}})
	}
	return es
}

func entryCount(t *testing.T, op operatorpb.OperatorClient) int {
	t.Helper()
	resp, err := op.ListEntries(ctx(t), &operatorpb.ListEntriesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Entries)
}

// A batch is created whole or not at all; a refusal names the entry by its
// position; skip_existing makes a repeated import go through.
func TestBatchCreateEntries(t *testing.T) {
	c := testConfig(t, "s1", newKEK(t))
	c.Bootstrap, c.TrustDomain = true, "example.org"
	s := mustStart(t, c)
	waitBootstrapped(t, s)
	op := s.operator()
	parent := "spiffe://example.org/meshca/server/s1"

	resp, err := op.BatchCreateEntries(ctx(t), &operatorpb.BatchCreateEntriesRequest{Entries: batchOf(parent, 0, 3)})
	if err != nil || len(resp.Entries) != 3 {
		t.Fatalf("BatchCreateEntries = %v, %v", resp, err)
	}
	for i, e := range resp.Entries {
		if e.Id == "" || e.Revision != 1 || e.SpiffeId != fmt.Sprintf("spiffe://example.org/w/%d", i) || e.TtlSeconds != 86400 || e.Profile != "ecdsa" {
			t.Errorf("entry %d: %+v", i, e)
		}
	}

	bad := batchOf(parent, 10, 3)
	bad[2].Selectors[0].Value = "uid:alice"
	repeat := batchOf(parent, 20, 3)
	repeat[2] = batchOf(parent, 20, 1)[0]
	for name, tc := range map[string]struct {
		req  *operatorpb.BatchCreateEntriesRequest
		code codes.Code
		msg  string
	}{
		"bad selector":  {&operatorpb.BatchCreateEntriesRequest{Entries: bad}, codes.InvalidArgument, "invalid entry 2 (spiffe://example.org/w/12)"},
		"existing":      {&operatorpb.BatchCreateEntriesRequest{Entries: append(batchOf(parent, 30, 1), batchOf(parent, 1, 1)...)}, codes.AlreadyExists, "entry 1:"},
		"repeated":      {&operatorpb.BatchCreateEntriesRequest{Entries: repeat}, codes.InvalidArgument, "it repeats entry 0"},
		"unknown agent": {&operatorpb.BatchCreateEntriesRequest{Entries: append(batchOf(parent, 40, 1), batchOf("spiffe://example.org/meshca/agent/x", 41, 1)...)}, codes.FailedPrecondition, "entry 1:"},
		"empty":         {&operatorpb.BatchCreateEntriesRequest{}, codes.InvalidArgument, "no entries"},
		"too many":      {&operatorpb.BatchCreateEntriesRequest{Entries: batchOf(parent, 100, MaxBatchEntries+1)}, codes.InvalidArgument, "at most 500"},
	} {
		_, err := op.BatchCreateEntries(ctx(t), tc.req)
		if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("%s: %v, want %s %q", name, err, tc.code, tc.msg)
		}
	}
	if n := entryCount(t, op); n != 3 {
		t.Fatalf("refused batches left %d entries, want the 3 of the first", n)
	}

	// The same import again, grown by two: the three are skipped.
	resp, err = op.BatchCreateEntries(ctx(t), &operatorpb.BatchCreateEntriesRequest{Entries: batchOf(parent, 0, 5), SkipExisting: true})
	if err != nil || len(resp.Entries) != 2 || !slices.Equal(resp.Skipped, []uint32{0, 1, 2}) || len(resp.ExistingIds) != 3 || resp.ExistingIds[0] == "" {
		t.Fatalf("with skip_existing: %v, %v", resp, err)
	}
	if n := entryCount(t, op); n != 5 {
		t.Fatalf("%d entries, want 5", n)
	}
}

// ListEntries pages in the order of the IDs; following next_page_token
// yields every entry once.
func TestListEntriesPages(t *testing.T) {
	c := testConfig(t, "s1", newKEK(t))
	c.Bootstrap, c.TrustDomain = true, "example.org"
	s := mustStart(t, c)
	waitBootstrapped(t, s)
	op := s.operator()
	if _, err := op.BatchCreateEntries(ctx(t), &operatorpb.BatchCreateEntriesRequest{Entries: batchOf("spiffe://example.org/meshca/server/s1", 0, 25)}); err != nil {
		t.Fatal(err)
	}
	var ids, sizes []string
	token := ""
	for range 10 {
		resp, err := op.ListEntries(ctx(t), &operatorpb.ListEntriesRequest{PageSize: 10, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, fmt.Sprint(len(resp.Entries)))
		for _, e := range resp.Entries {
			ids = append(ids, e.Id)
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	if strings.Join(sizes, ",") != "10,10,5" || len(ids) != 25 || !slices.IsSorted(ids) || len(slices.Compact(slices.Clone(ids))) != 25 {
		t.Fatalf("pages of %s, %d IDs (sorted %v)", strings.Join(sizes, ","), len(ids), slices.IsSorted(ids))
	}
	for name, req := range map[string]*operatorpb.ListEntriesRequest{
		"bad token": {PageSize: 10, PageToken: "!!"},
		"too large": {PageSize: MaxEntriesPage + 1},
	} {
		if _, err := op.ListEntries(ctx(t), req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}
