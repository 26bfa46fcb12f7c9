package raftfsm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/hashicorp/go-memdb"
	"github.com/meshca/meshca/proto/raftpb"
	"google.golang.org/protobuf/proto"
)

// Snapshot stream format, version 1:
//
//	"MESHCA-SNAPSHOT\n"      magic
//	uvarint                  format version (1)
//	uvarint                  index of the last applied entry
//	{ uvarint n; n bytes }*  raftpb.SnapshotRecord frames, n > 0
//	uvarint 0                end of records
//	32 bytes                 SHA-256 of every byte above
//
// The state hash is the SHA-256 of the record frames alone, so it does not
// depend on the index.
const (
	snapshotMagic   = "MESHCA-SNAPSHOT\n"
	snapshotVersion = 1
	maxRecordSize   = 64 << 20
)

var marshal = proto.MarshalOptions{Deterministic: true}

// writeSnapshot streams the state seen by txn and returns the stream
// checksum and the state hash.
func writeSnapshot(w io.Writer, txn *memdb.Txn, index uint64) (fileSum, stateSum [32]byte, err error) {
	all, state := sha256.New(), sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, all), 64<<10)
	var lenBuf [binary.MaxVarintLen64]byte
	putUvarint := func(dst io.Writer, v uint64) {
		n := binary.PutUvarint(lenBuf[:], v)
		dst.Write(lenBuf[:n])
	}
	bw.WriteString(snapshotMagic)
	putUvarint(bw, snapshotVersion)
	putUvarint(bw, index)
	var buf []byte
	for _, table := range tableOrder {
		it, err := txn.Get(table, "id")
		if err != nil {
			return fileSum, stateSum, fmt.Errorf("read table %s: %w", table, err)
		}
		for obj := it.Next(); obj != nil; obj = it.Next() {
			rec, err := wrapRecord(obj)
			if err != nil {
				return fileSum, stateSum, err
			}
			buf, err = marshal.MarshalAppend(buf[:0], rec)
			if err != nil {
				return fileSum, stateSum, fmt.Errorf("encode %s record: %w", table, err)
			}
			frame := io.MultiWriter(bw, state)
			putUvarint(frame, uint64(len(buf)))
			frame.Write(buf)
		}
	}
	putUvarint(bw, 0)
	if err := bw.Flush(); err != nil {
		return fileSum, stateSum, err
	}
	copy(fileSum[:], all.Sum(nil))
	copy(stateSum[:], state.Sum(nil))
	if _, err := w.Write(fileSum[:]); err != nil {
		return fileSum, stateSum, err
	}
	return fileSum, stateSum, nil
}

// hashReader hashes every byte read through it.
type hashReader struct {
	r *bufio.Reader
	h hash.Hash
}

func (h *hashReader) ReadByte() (byte, error) {
	b, err := h.r.ReadByte()
	if err == nil {
		h.h.Write([]byte{b})
	}
	return b, err
}

func (h *hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	return n, err
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorruptSnapshot, fmt.Sprintf(format, args...))
}

// readSnapshot verifies and loads a snapshot stream into a new database.
// Nothing is returned unless the whole stream verifies.
func readSnapshot(r io.Reader) (db *memdb.MemDB, index uint64, stateSum [32]byte, err error) {
	br := bufio.NewReaderSize(r, 64<<10)
	all, state := sha256.New(), sha256.New()
	hr := &hashReader{r: br, h: all}
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(hr, magic); err != nil || string(magic) != snapshotMagic {
		return nil, 0, stateSum, corrupt("not a meshca snapshot (bad magic)")
	}
	version, err := binary.ReadUvarint(hr)
	if err != nil {
		return nil, 0, stateSum, corrupt("truncated header")
	}
	if version != snapshotVersion {
		return nil, 0, stateSum, corrupt("format version %d; this meshca reads version %d", version, snapshotVersion)
	}
	index, err = binary.ReadUvarint(hr)
	if err != nil {
		return nil, 0, stateSum, corrupt("truncated header")
	}
	db, err = memdb.NewMemDB(schema)
	if err != nil {
		return nil, 0, stateSum, err
	}
	txn := db.Txn(true)
	defer txn.Abort()
	var lenBuf [binary.MaxVarintLen64]byte
	buf := make([]byte, 0, 4096)
	for n := 0; ; n++ {
		size, err := binary.ReadUvarint(hr)
		if err != nil {
			return nil, 0, stateSum, corrupt("truncated after %d records", n)
		}
		if size == 0 {
			break
		}
		if size > maxRecordSize {
			return nil, 0, stateSum, corrupt("record %d claims %d bytes", n, size)
		}
		if cap(buf) < int(size) {
			buf = make([]byte, size)
		}
		buf = buf[:size]
		if _, err := io.ReadFull(hr, buf); err != nil {
			return nil, 0, stateSum, corrupt("truncated in record %d", n)
		}
		state.Write(lenBuf[:binary.PutUvarint(lenBuf[:], size)])
		state.Write(buf)
		var rec raftpb.SnapshotRecord
		if err := proto.Unmarshal(buf, &rec); err != nil {
			return nil, 0, stateSum, corrupt("record %d: %v", n, err)
		}
		table, obj, err := unwrapRecord(&rec)
		if err != nil {
			return nil, 0, stateSum, corrupt("record %d: %v", n, err)
		}
		if err := txn.Insert(table, obj); err != nil {
			return nil, 0, stateSum, corrupt("record %d: %v", n, err)
		}
	}
	want := all.Sum(nil)
	var got [32]byte
	if _, err := io.ReadFull(br, got[:]); err != nil {
		return nil, 0, stateSum, corrupt("missing checksum")
	}
	if !bytes.Equal(got[:], want) {
		return nil, 0, stateSum, corrupt("checksum mismatch")
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		return nil, 0, stateSum, corrupt("data after the checksum")
	}
	txn.Commit()
	copy(stateSum[:], state.Sum(nil))
	return db, index, stateSum, nil
}

// VerifySnapshot reads a whole snapshot stream and returns its index and
// state hash, or an error wrapping ErrCorruptSnapshot.
func VerifySnapshot(r io.Reader) (index uint64, stateHash [32]byte, err error) {
	_, index, stateHash, err = readSnapshot(r)
	return index, stateHash, err
}

func wrapRecord(obj any) (*raftpb.SnapshotRecord, error) {
	r := &raftpb.SnapshotRecord{}
	switch o := obj.(type) {
	case *raftpb.TrustDomain:
		r.Record = &raftpb.SnapshotRecord_TrustDomain{TrustDomain: o}
	case *raftpb.Server:
		r.Record = &raftpb.SnapshotRecord_Server{Server: o}
	case *raftpb.Authority:
		r.Record = &raftpb.SnapshotRecord_Authority{Authority: o}
	case *raftpb.Entry:
		r.Record = &raftpb.SnapshotRecord_Entry{Entry: o}
	case *raftpb.Node:
		r.Record = &raftpb.SnapshotRecord_Node{Node: o}
	case *raftpb.JoinToken:
		r.Record = &raftpb.SnapshotRecord_JoinToken{JoinToken: o}
	case *raftpb.Revocation:
		r.Record = &raftpb.SnapshotRecord_Revocation{Revocation: o}
	case *raftpb.Policy:
		r.Record = &raftpb.SnapshotRecord_Policy{Policy: o}
	case *raftpb.LedgerBlock:
		r.Record = &raftpb.SnapshotRecord_LedgerBlock{LedgerBlock: o}
	case *raftpb.JWTKey:
		r.Record = &raftpb.SnapshotRecord_JwtKey{JwtKey: o}
	case *raftpb.AppliedRequest:
		r.Record = &raftpb.SnapshotRecord_AppliedRequest{AppliedRequest: o}
	case *raftpb.CRL:
		r.Record = &raftpb.SnapshotRecord_Crl{Crl: o}
	case *raftpb.Admin:
		r.Record = &raftpb.SnapshotRecord_Admin{Admin: o}
	case *raftpb.IssuancePolicy: // issue 12
		r.Record = &raftpb.SnapshotRecord_IssuancePolicy{IssuancePolicy: o}
	case *raftpb.OPABundle:
		r.Record = &raftpb.SnapshotRecord_OpaBundle{OpaBundle: o}
	case *raftpb.OPAKey:
		r.Record = &raftpb.SnapshotRecord_OpaKey{OpaKey: o}
	case *raftpb.BundleToken: // issue 12 tokens
		r.Record = &raftpb.SnapshotRecord_BundleToken{BundleToken: o}
	default:
		return nil, fmt.Errorf("raftfsm: no snapshot record for %T", obj)
	}
	return r, nil
}

func unwrapRecord(r *raftpb.SnapshotRecord) (table string, obj any, err error) {
	switch v := r.Record.(type) {
	case *raftpb.SnapshotRecord_TrustDomain:
		return tableMeta, v.TrustDomain, nil
	case *raftpb.SnapshotRecord_Server:
		return tableServers, v.Server, nil
	case *raftpb.SnapshotRecord_Authority:
		return tableAuthorities, v.Authority, nil
	case *raftpb.SnapshotRecord_Entry:
		return tableEntries, v.Entry, nil
	case *raftpb.SnapshotRecord_Node:
		return tableNodes, v.Node, nil
	case *raftpb.SnapshotRecord_JoinToken:
		return tableTokens, v.JoinToken, nil
	case *raftpb.SnapshotRecord_Revocation:
		return tableRevocations, v.Revocation, nil
	case *raftpb.SnapshotRecord_Policy:
		return tablePolicies, v.Policy, nil
	case *raftpb.SnapshotRecord_LedgerBlock:
		return tableLedger, v.LedgerBlock, nil
	case *raftpb.SnapshotRecord_JwtKey:
		return tableJWTKeys, v.JwtKey, nil
	case *raftpb.SnapshotRecord_AppliedRequest:
		return tableRequests, v.AppliedRequest, nil
	case *raftpb.SnapshotRecord_Crl:
		return tableCRLs, v.Crl, nil
	case *raftpb.SnapshotRecord_Admin:
		return tableAdmins, v.Admin, nil
	case *raftpb.SnapshotRecord_IssuancePolicy: // issue 12
		return tableIssuancePolicies, v.IssuancePolicy, nil
	case *raftpb.SnapshotRecord_OpaBundle:
		return tableOPABundles, v.OpaBundle, nil
	case *raftpb.SnapshotRecord_OpaKey:
		return tableOPAKeys, v.OpaKey, nil
	case *raftpb.SnapshotRecord_BundleToken: // issue 12 tokens
		return tableBundleTokens, v.BundleToken, nil
	}
	return "", nil, errors.New("unknown record type (written by a newer meshca?)")
}

// Reindex copies a snapshot stream, verified whole, to w with its applied
// index replaced: a snapshot made by another cluster is restored at the
// index this cluster's Raft log gives it, never at the index it had there.
// It returns the state hash.
func Reindex(r io.Reader, w io.Writer, index uint64) ([32]byte, error) {
	db, _, sum, err := readSnapshot(r)
	if err != nil {
		return sum, err
	}
	_, got, err := writeSnapshot(w, db.Txn(false), index)
	switch {
	case err != nil:
		return sum, fmt.Errorf("raftfsm: reindex snapshot: %w", err)
	case got != sum:
		return sum, errors.New("raftfsm: reindexed snapshot has another state hash")
	}
	return sum, nil
}
