// Package entryfile reads registration entries in bulk from a JSON file in
// the shape of SPIRE's `spire-server entry create -data`:
//
//	{"entries": [{"spiffe_id": "spiffe://example.org/ns/prod/sa/api",
//	  "parent_id": "spiffe://example.org/meshca/agent/...",
//	  "selectors": [{"type": "k8s", "value": "ns:prod"}, {"type": "k8s", "value": "sa:api"}],
//	  "x509_svid_ttl": 3600, "dns_names": ["api.prod.svc"]}]}
//
// x509_svid_ttl (or SPIRE's older ttl) is the SVIDs' lifetime in seconds
// (0: the server's default); meshca adds "profile" ("ecdsa" or "sm2"). SPIRE
// fields meshca has no counterpart for (admin, downstream, federates_with,
// jwt_svid_ttl, entry_id, entryExpiry, store_svid, hint, revision_number,
// created_at) are accepted at their zero value only, so that a file written
// for SPIRE loads unless it asks for something meshca would not do; any
// other key is an error. The server checks each entry's values.
package entryfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/meshca/meshca/proto/operatorpb"
)

// MaxFileSize bounds an entries file.
const MaxFileSize = 64 << 20

// Error reports what is wrong with an entries file; Entry is the 0-based
// position of the entry concerned, or -1 for the file as a whole.
type Error struct {
	Entry  int
	Reason string
}

func (e *Error) Error() string {
	if e.Entry < 0 {
		return "entries file: " + e.Reason
	}
	return fmt.Sprintf("entries file, entry %d: %s", e.Entry, e.Reason)
}

type file struct {
	Entries *[]entry `json:"entries"`
}

type selector struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

type entry struct {
	Selectors   []selector `json:"selectors"`
	SpiffeID    string     `json:"spiffe_id"`
	ParentID    string     `json:"parent_id"`
	TTL         int64      `json:"ttl"`
	X509SVIDTTL int64      `json:"x509_svid_ttl"`
	DNSNames    []string   `json:"dns_names"`
	Profile     string     `json:"profile"`

	// SPIRE's, accepted at their zero value only.
	JWTSVIDTTL     int64    `json:"jwt_svid_ttl"`
	FederatesWith  []string `json:"federates_with"`
	EntryID        string   `json:"entry_id"`
	Admin          bool     `json:"admin"`
	Downstream     bool     `json:"downstream"`
	EntryExpiry    int64    `json:"entryExpiry"`
	StoreSVID      bool     `json:"store_svid"`
	Hint           string   `json:"hint"`
	RevisionNumber int64    `json:"revision_number"`
	CreatedAt      int64    `json:"created_at"`
}

// unsupported names the SPIRE fields of e that are set, with why meshca
// does not take them.
func (e *entry) unsupported() error {
	for _, u := range []struct {
		set  bool
		what string
	}{
		{e.Admin, "admin: meshca entries grant no operator access (servers' --admin-id does)"},
		{e.Downstream, "downstream: meshca has no downstream servers"},
		{len(e.FederatesWith) > 0, "federates_with: meshca does not federate trust domains"},
		{e.JWTSVIDTTL != 0, "jwt_svid_ttl: JWT-SVID lifetimes are not set per entry"},
		{e.EntryID != "", "entry_id: the server assigns entry IDs"},
		{e.EntryExpiry != 0, "entryExpiry: meshca entries do not expire"},
		{e.StoreSVID, "store_svid: meshca has no SVID stores"},
		{e.Hint != "", "hint: meshca entries have no hints"},
		{e.RevisionNumber != 0 || e.CreatedAt != 0, "revision_number and created_at: the server assigns them"},
	} {
		if u.set {
			return errors.New(u.what)
		}
	}
	return nil
}

// Parse reads an entries file. It refuses unknown keys, trailing data, a
// file without entries, and the SPIRE features meshca lacks, with an
// *Error naming the entry.
func Parse(r io.Reader) ([]*operatorpb.Entry, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("entries file: %w", err)
	}
	if len(b) > MaxFileSize {
		return nil, &Error{Entry: -1, Reason: fmt.Sprintf("larger than %d bytes", MaxFileSize)}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var f file
	if err := dec.Decode(&f); err != nil {
		return nil, &Error{Entry: -1, Reason: describe(err)}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, &Error{Entry: -1, Reason: "unexpected data after the JSON object"}
	}
	if f.Entries == nil || len(*f.Entries) == 0 {
		return nil, &Error{Entry: -1, Reason: `no entries: want {"entries": [{"spiffe_id": ..., "parent_id": ..., "selectors": [...]}, ...]}`}
	}
	out := make([]*operatorpb.Entry, 0, len(*f.Entries))
	for i, e := range *f.Entries {
		if err := e.unsupported(); err != nil {
			return nil, &Error{Entry: i, Reason: err.Error()}
		}
		ttl := e.X509SVIDTTL
		switch {
		case e.TTL < 0 || e.X509SVIDTTL < 0:
			return nil, &Error{Entry: i, Reason: "a negative TTL"}
		case e.TTL != 0 && e.X509SVIDTTL != 0 && e.TTL != e.X509SVIDTTL:
			return nil, &Error{Entry: i, Reason: "ttl and x509_svid_ttl differ: give x509_svid_ttl only"}
		case ttl == 0:
			ttl = e.TTL
		}
		oe := &operatorpb.Entry{SpiffeId: e.SpiffeID, ParentId: e.ParentID, TtlSeconds: ttl, DnsNames: e.DNSNames, Profile: e.Profile}
		for _, s := range e.Selectors {
			oe.Selectors = append(oe.Selectors, &operatorpb.Selector{Type: s.Type, Value: s.Value})
		}
		out = append(out, oe)
	}
	return out, nil
}

// describe words a decoding error, naming an unknown key as such.
func describe(err error) string {
	if key, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return "unknown key " + key + " (an entry has spiffe_id, parent_id, selectors, x509_svid_ttl, dns_names and profile)"
	}
	return "not a JSON object of entries: " + err.Error()
}
