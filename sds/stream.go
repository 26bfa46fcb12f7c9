package sds

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"hash/fnv"
	"io"
	"slices"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// protocol is the SotW or delta state of one stream.
type protocol interface {
	// build computes, with st.mu held, what to send now: nil when
	// nothing changed for the client.
	build(st *stream) (built, error)
}

type built struct {
	msg       proto.Message
	resources int
	removals  int
	audits    []AuditEvent
}

// stream is the server side of one SotW or delta stream.
//
// Goroutines: the stream's own gRPC handler goroutine receives requests,
// applies them and answers them; a push worker (see hub) sends what a
// notification changed. They never Send at the same time: sendMu is held
// around every build-and-Send, the handler waiting for it, a worker only
// trying it (a busy stream is rechecked by its current sender). A worker
// does not send while the latest response is unacknowledged (inflight): it
// marks the stream deferred and the ACK or NACK sends the change. Because
// a client has acknowledged everything it was sent before a worker sends
// again, a worker's Send never waits for gRPC flow control, so a stuck
// client cannot hold a worker. Nonces are random, so a client cannot
// acknowledge what it has not read.
type stream struct {
	srv    *Server
	id     uint64
	method string
	ctx    context.Context
	ss     grpc.ServerStream
	p      protocol

	queued  atomic.Bool // in the hub's queue
	recheck atomic.Bool // a push found sendMu busy
	sendMu  sync.Mutex

	mu       sync.Mutex // guards the fields below and p
	src      Source
	nodeID   string
	topics   []string // sorted; registered in the hub
	inflight bool     // the latest response is not yet ACKed or NACKed
	deferred bool     // a push waited for the ACK
	closed   bool
}

func (s *Server) newStream(ss grpc.ServerStream, method string, p protocol) *stream {
	s.stats.open.Add(1)
	return &stream{srv: s, id: s.ids.Add(1), method: method, ctx: ss.Context(), ss: ss, p: p}
}

// close unregisters the stream and waits for a push in progress, so that
// nothing is sent after the handler returns.
func (st *stream) close() {
	st.mu.Lock()
	st.closed = true
	topics := st.topics
	st.topics = nil
	st.mu.Unlock()
	st.srv.hub.setTopics(st, topics, nil)
	st.sendMu.Lock()
	//nolint:staticcheck // an empty critical section: waiting for the holder is the point.
	st.sendMu.Unlock()
	st.srv.stats.open.Add(-1)
}

func (st *stream) wake() {
	if st.queued.CompareAndSwap(false, true) {
		st.srv.hub.enqueue(st)
	}
}

// push runs on a worker after a notification.
func (st *stream) push() {
	if err := st.flush(true); err != nil && st.ctx.Err() == nil {
		st.srv.stats.sourceErrors.Add(1)
		st.srv.log.Warn("sds push failed", "method", st.method, "stream", st.id, "node", st.nodeID, "err", err)
	}
}

// flush builds and sends what changed, as the handler (worker false) or
// a push worker.
func (st *stream) flush(worker bool) error {
	if worker {
		st.recheck.Store(true)
		if !st.sendMu.TryLock() {
			return nil // the holder rechecks
		}
	} else {
		st.sendMu.Lock()
	}
	for {
		st.recheck.Store(false)
		err := st.sendLocked(worker)
		st.sendMu.Unlock()
		if err != nil {
			return err
		}
		if !st.recheck.Load() || !st.sendMu.TryLock() {
			return nil
		}
		worker = true
	}
}

func (st *stream) sendLocked(worker bool) error {
	st.mu.Lock()
	if st.closed || st.src == nil {
		st.mu.Unlock()
		return nil
	}
	if worker && st.inflight {
		st.deferred = true
		st.mu.Unlock()
		return nil
	}
	b, err := st.p.build(st)
	if b.msg != nil {
		st.inflight, st.deferred = true, false
	}
	st.mu.Unlock()
	st.srv.audit(st.ctx, b.audits)
	if err != nil {
		return err
	}
	if b.msg == nil {
		return nil
	}
	if err := st.ss.SendMsg(b.msg); err != nil {
		return err
	}
	c := &st.srv.stats
	c.responses.Add(1)
	c.resources.Add(uint64(b.resources))
	c.removals.Add(uint64(b.removals))
	return nil
}

// resolve resolves names (plus, for a wildcard, every name of the
// source) with st.mu held, and registers the answers' topics. When the
// topics changed it resolves once more after registering them, so that a
// change notified between the first resolution and the registration is
// not missed.
func (st *stream) resolve(names []string, wildcard bool) ([]string, []Result, error) {
	for attempt := 0; ; attempt++ {
		ns, rs, topics, err := resolveNames(st.ctx, st.src, names, wildcard)
		if err != nil {
			return nil, nil, err
		}
		same := slices.Equal(topics, st.topics)
		if !same {
			st.srv.hub.setTopics(st, st.topics, topics)
			st.topics = topics
		}
		if same || attempt == 2 {
			return ns, rs, nil
		}
	}
}

// resolveNames resolves names against src; with wildcard, the source's
// own names are added (after the explicit ones, sorted). The topics are
// sorted and deduplicated.
func resolveNames(ctx context.Context, src Source, names []string, wildcard bool) ([]string, []Result, []string, error) {
	var topics []string
	if wildcard {
		all, ts, err := src.Names(ctx)
		if err != nil {
			return nil, nil, nil, grpcError(err, "names of caller")
		}
		topics = append(topics, ts...)
		all = slices.Clone(all)
		slices.Sort(all)
		all = slices.Compact(all)
		merged := slices.Clone(names)
		explicit := make(map[string]bool, len(names))
		for _, n := range names {
			explicit[n] = true
		}
		for _, n := range all {
			if n != "" && !explicit[n] {
				merged = append(merged, n)
			}
		}
		names = merged
	}
	rs := make([]Result, len(names))
	for i, n := range names {
		r, err := src.Resolve(ctx, n)
		if err != nil {
			return nil, nil, nil, grpcError(err, "resolve "+truncate(n, 256))
		}
		switch {
		case r.Status == Granted && r.Resource == nil:
			return nil, nil, nil, status.Errorf(codes.Internal, "sds: source granted %q without a resource", truncate(n, 256))
		case r.Status != Granted && r.Status != Refused && r.Status != Pending:
			return nil, nil, nil, status.Errorf(codes.Internal, "sds: source answered %q with %v", truncate(n, 256), r.Status)
		}
		rs[i] = r
		topics = append(topics, r.Topics...)
	}
	slices.Sort(topics)
	return names, rs, slices.Compact(topics), nil
}

// recvError maps a Recv error to the handler's return value.
func recvError(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	if s, ok := status.FromError(err); ok && s.Code() == codes.Canceled {
		return nil
	}
	return err
}

// newNonce returns a random nonce: a client cannot acknowledge a response
// it has not read.
func newNonce() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// versionDigest is a version_info that changes iff one of the
// (name, version) pairs changes.
func versionDigest(pairs func(yield func(name, version string) bool)) string {
	h := fnv.New64a()
	for n, v := range pairs {
		_, _ = io.WriteString(h, n)
		_, _ = h.Write([]byte{0})
		_, _ = io.WriteString(h, v)
		_, _ = h.Write([]byte{0})
	}
	var b [8]byte
	return hex.EncodeToString(h.Sum(b[:0]))
}

// dedupe returns names without duplicates, in first-seen order, and
// whether "*" was among them (it is removed).
func dedupe(names []string) ([]string, bool) {
	star := false
	out := make([]string, 0, len(names))
	var seen map[string]bool
	if len(names) > 16 {
		seen = make(map[string]bool, len(names))
	}
	for _, n := range names {
		switch {
		case n == "*":
			star = true
		case seen != nil:
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		case !slices.Contains(out, n):
			out = append(out, n)
		}
	}
	return out, star
}

func errorDetail(st interface{ GetMessage() string }) string {
	return truncate(st.GetMessage(), 512)
}
