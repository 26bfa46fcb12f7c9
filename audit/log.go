package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
)

// Log defaults.
const (
	DefaultMaxSegmentBytes = 64 << 20
	DefaultMaxSegments     = 16
	DefaultAggregateWindow = 10 * time.Second
	DefaultQueueSize       = 1 << 16
	// maxBatch bounds the events of one write and fsync.
	maxBatch = 4096
	// minSyncInterval spaces the fsyncs of a busy log: an event that comes
	// sooner after the last fsync waits for the rest of the interval, with
	// those that follow it, so that a server issuing thousands of
	// certificates a second fsyncs its audit log at most a few hundred
	// times a second, not once per handful of events. It is a batching
	// delay in real time (not a lifetime), off the request path: Record
	// never waits for it; Sync waits at most this much longer.
	minSyncInterval = 5 * time.Millisecond
	// maxLineSize bounds one line of a segment when reading.
	maxLineSize = 1 << 20
)

// Config configures a Log. Fields documented with a default may be zero.
type Config struct {
	// Dir holds the segment files; it is created (mode 0700) if missing.
	Dir string
	// Source names the recorder in every event: a server's node ID, an
	// agent's SPIFFE ID.
	Source string
	// Clock stamps events and runs the aggregation windows. Default: the
	// real clock.
	Clock clockwork.Clock
	// Logger also receives every event (denials at Warn, the others at
	// Info), with audit=true. Default: none.
	Logger *slog.Logger
	// QuietAllows are actions whose allows reach Logger at Debug, not
	// Info: the certificates a server signs by the thousand a second,
	// which would drown its log (and cost a formatted line each on the
	// request path). They are in the audit log all the same; denials of
	// these actions stay at Warn.
	QuietAllows []string
	// MaxSegmentBytes closes a segment once it is this large. Default:
	// DefaultMaxSegmentBytes.
	MaxSegmentBytes int64
	// MaxSegments bounds the segments kept; the oldest are deleted.
	// Default: DefaultMaxSegments.
	MaxSegments int
	// AggregateWindow is how long identical denials are counted into one
	// event after the first; negative disables aggregation. Default:
	// DefaultAggregateWindow.
	AggregateWindow time.Duration
	// QueueSize bounds the events recorded and not yet written; Record
	// waits when it is full. Default: DefaultQueueSize.
	QueueSize int
	// Recent is how many of the newest durable events are kept in memory
	// for Recent (an exporter that keeps up reads them there rather than
	// decoding the segments again). 0 keeps none.
	Recent int
}

// Log is a durable, sequenced audit log. It is safe for concurrent use.
type Log struct {
	cfg Config

	mu     sync.Mutex // guards seq, agg and closed; held while an event is queued, so queue order is seq order
	seq    uint64     // last sequence number assigned
	agg    map[aggKey]*aggregate
	closed bool

	queue   chan Event
	durable atomic.Uint64 // last sequence number fsynced
	synced  chan struct{} // closed and replaced after every fsync; guarded by syncMu
	syncMu  sync.Mutex
	werr    atomic.Pointer[error] // the writer's first error, if any

	f    *os.File // the segment being written
	size int64

	recent recentEvents // the newest durable events, for Recent

	stop context.CancelFunc
	wg   sync.WaitGroup
}

type aggKey struct{ actor, action, subject, reason string }

type aggregate struct {
	first Event
	until time.Time
	count uint64 // denials folded in since the first
}

// Open opens (or creates) the log in cfg.Dir, repairs a torn last line,
// and resumes numbering after the last event on disk. It starts the
// writer; Close stops it.
func Open(cfg Config) (*Log, error) {
	if cfg.Dir == "" || cfg.Source == "" {
		return nil, errors.New("audit: a directory and a source are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.MaxSegmentBytes <= 0 {
		cfg.MaxSegmentBytes = DefaultMaxSegmentBytes
	}
	if cfg.MaxSegments <= 0 {
		cfg.MaxSegments = DefaultMaxSegments
	}
	if cfg.AggregateWindow == 0 {
		cfg.AggregateWindow = DefaultAggregateWindow
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	segs, err := segments(cfg.Dir)
	if err != nil {
		return nil, err
	}
	l := &Log{cfg: cfg, agg: map[aggKey]*aggregate{}, queue: make(chan Event, cfg.QueueSize), synced: make(chan struct{})}
	if len(segs) > 0 {
		last := segs[len(segs)-1]
		lastSeq, size, err := repair(filepath.Join(cfg.Dir, last.name), last.first)
		if err != nil {
			return nil, err
		}
		l.seq = lastSeq
		if l.f, err = os.OpenFile(filepath.Join(cfg.Dir, last.name), os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
		l.size = size
	} else if err := l.roll(1); err != nil {
		return nil, err
	}
	l.durable.Store(l.seq)
	ctx, stop := context.WithCancel(context.Background())
	l.stop = stop
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.write(ctx)
	}()
	if cfg.AggregateWindow > 0 {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.flushAggregates(ctx)
		}()
	}
	return l, nil
}

// LastSeq is the sequence number of the last event recorded.
func (l *Log) LastSeq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq
}

// Record stamps e with the time, the source and the next sequence number,
// queues it and logs it to the Logger. A denial identical to one recorded
// less than AggregateWindow ago is counted instead and recorded with the
// others when the window closes; Record then returns 0.
func (l *Log) Record(e Event) uint64 {
	e.Time = l.cfg.Clock.Now().UTC()
	e.Source = l.cfg.Source
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return 0
	}
	if e.Decision == Deny && l.cfg.AggregateWindow > 0 {
		k := aggKey{e.Actor, e.Action, e.Subject, e.Reason}
		if a, ok := l.agg[k]; ok && e.Time.Before(a.until) {
			a.count++
			l.mu.Unlock()
			return 0
		}
		l.agg[k] = &aggregate{first: e, until: e.Time.Add(l.cfg.AggregateWindow)}
	}
	seq := l.enqueueLocked(e)
	l.mu.Unlock()
	return seq
}

func (l *Log) enqueueLocked(e Event) uint64 {
	l.seq++
	e.Seq = l.seq
	l.queue <- e
	if lg := l.cfg.Logger; lg != nil {
		level := slog.LevelInfo
		switch {
		case e.Decision == Deny:
			level = slog.LevelWarn
		case e.Decision == Allow && slices.Contains(l.cfg.QuietAllows, e.Action):
			level = slog.LevelDebug
		}
		if !lg.Enabled(context.Background(), level) {
			return e.Seq
		}
		attrs := []slog.Attr{slog.Bool("audit", true), slog.Uint64("seq", e.Seq), slog.String("decision", string(e.Decision))}
		if e.Actor != "" {
			attrs = append(attrs, slog.String("actor", e.Actor))
		}
		if e.Subject != "" {
			attrs = append(attrs, slog.String("subject", e.Subject))
		}
		if e.Reason != "" {
			attrs = append(attrs, slog.String("reason", e.Reason))
		}
		if e.Count > 1 {
			attrs = append(attrs, slog.Uint64("count", e.Count))
		}
		for _, k := range sortedKeys(e.Details) {
			attrs = append(attrs, slog.String(k, e.Details[k]))
		}
		lg.LogAttrs(context.Background(), level, e.Action, attrs...)
	}
	return e.Seq
}

func sortedKeys(m map[string]string) []string {
	if len(m) == 0 {
		return nil
	}
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// Sync waits until every event recorded before the call is on disk.
func (l *Log) Sync(ctx context.Context) error {
	target := l.LastSeq()
	for {
		l.syncMu.Lock()
		ch := l.synced
		l.syncMu.Unlock()
		if l.durable.Load() >= target {
			return nil
		}
		if err := l.err(); err != nil {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("audit: sync: %w", ctx.Err())
		}
	}
}

func (l *Log) err() error {
	if p := l.werr.Load(); p != nil {
		return *p
	}
	return nil
}

// Close records what is queued, aggregates included, syncs it, and stops.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return l.err()
	}
	for k, a := range l.agg {
		if a.count > 0 {
			l.enqueueLocked(aggregated(a))
		}
		delete(l.agg, k)
	}
	l.closed = true
	l.mu.Unlock()
	l.stop()
	l.wg.Wait()
	err := l.err()
	if l.f != nil {
		err = errors.Join(err, l.f.Close())
	}
	return err
}

func aggregated(a *aggregate) Event {
	e := a.first
	e.Count = a.count
	e.Reason = a.first.Reason
	return e
}

// flushAggregates records the denials counted in windows that closed.
func (l *Log) flushAggregates(ctx context.Context) {
	t := l.cfg.Clock.NewTicker(l.cfg.AggregateWindow / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
		}
		now := l.cfg.Clock.Now()
		l.mu.Lock()
		for k, a := range l.agg {
			if now.Before(a.until) {
				continue
			}
			if a.count > 0 && !l.closed {
				l.enqueueLocked(aggregated(a))
			}
			delete(l.agg, k)
		}
		l.mu.Unlock()
	}
}

// write appends queued events in batches, one fsync per batch, until ctx
// ends and the queue is empty.
func (l *Log) write(ctx context.Context) {
	var buf bytes.Buffer
	batch := make([]Event, 0, maxBatch)
	var lastSync time.Time
	pause := time.NewTimer(0)
	defer pause.Stop()
	for {
		batch = batch[:0]
		select {
		case e := <-l.queue:
			batch = append(batch, e)
		case <-ctx.Done():
			select {
			case e := <-l.queue:
				batch = append(batch, e)
			default:
				return
			}
		}
		if wait := minSyncInterval - time.Since(lastSync); wait > 0 && ctx.Err() == nil {
			pause.Reset(wait)
			select {
			case <-pause.C:
			case <-ctx.Done():
			}
		}
	drain:
		for len(batch) < maxBatch {
			select {
			case e := <-l.queue:
				batch = append(batch, e)
			default:
				break drain
			}
		}
		if l.err() != nil {
			continue // a failed disk: events are dropped, Sync reports the error
		}
		err := l.append(&buf, batch)
		lastSync = time.Now()
		if err != nil {
			err = fmt.Errorf("audit: write %s: %w", l.cfg.Dir, err)
			l.werr.CompareAndSwap(nil, &err)
			if lg := l.cfg.Logger; lg != nil {
				lg.Error("audit log write failed; events are being lost", "err", err)
			}
		} else {
			l.recent.add(batch, l.cfg.Recent)
			l.durable.Store(batch[len(batch)-1].Seq)
		}
		l.syncMu.Lock()
		close(l.synced)
		l.synced = make(chan struct{})
		l.syncMu.Unlock()
	}
}

// append writes a batch to the current segment and fsyncs it, starting a
// new segment first if the current one is full.
func (l *Log) append(buf *bytes.Buffer, batch []Event) error {
	if l.size >= l.cfg.MaxSegmentBytes {
		if err := l.roll(batch[0].Seq); err != nil {
			return err
		}
	}
	buf.Reset()
	for i := range batch {
		if err := encodeLine(buf, &batch[i]); err != nil {
			return err
		}
	}
	n, err := l.f.Write(buf.Bytes())
	l.size += int64(n)
	if err != nil {
		return err
	}
	return l.f.Sync()
}

// roll closes the current segment and starts one whose first event is seq,
// deleting the oldest segments beyond MaxSegments.
func (l *Log) roll(seq uint64) error {
	if l.f != nil {
		if err := l.f.Close(); err != nil {
			return err
		}
		l.f = nil
	}
	f, err := os.OpenFile(filepath.Join(l.cfg.Dir, segmentName(seq)), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit: new segment: %w", err)
	}
	l.f, l.size = f, 0
	segs, err := segments(l.cfg.Dir)
	if err != nil {
		return err
	}
	for len(segs) > l.cfg.MaxSegments {
		if err := os.Remove(filepath.Join(l.cfg.Dir, segs[0].name)); err != nil {
			return fmt.Errorf("audit: drop the oldest segment: %w", err)
		}
		segs = segs[1:]
	}
	return syncDir(l.cfg.Dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// encodeLine appends "<crc32c hex> <json>\n".
func encodeLine(buf *bytes.Buffer, e *Event) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	var sum [4]byte
	c := crc32.Checksum(b, castagnoli)
	sum[0], sum[1], sum[2], sum[3] = byte(c>>24), byte(c>>16), byte(c>>8), byte(c)
	var hx [8]byte
	hex.Encode(hx[:], sum[:])
	buf.Write(hx[:])
	buf.WriteByte(' ')
	buf.Write(b)
	buf.WriteByte('\n')
	return nil
}

// ErrCorrupt means a segment holds a damaged line before its end, or
// sequence numbers that do not follow each other: not what a crash leaves.
var ErrCorrupt = errors.New("audit: corrupt log")

// decodeLine parses one line (without its newline).
func decodeLine(line []byte) (Event, error) {
	var e Event
	if len(line) < 10 || line[8] != ' ' {
		return e, errors.New("malformed line")
	}
	var sum [4]byte
	if _, err := hex.Decode(sum[:], line[:8]); err != nil {
		return e, errors.New("malformed checksum")
	}
	body := line[9:]
	want := uint32(sum[0])<<24 | uint32(sum[1])<<16 | uint32(sum[2])<<8 | uint32(sum[3])
	if crc32.Checksum(body, castagnoli) != want {
		return e, errors.New("checksum mismatch")
	}
	if err := json.Unmarshal(body, &e); err != nil {
		return e, err
	}
	if e.Seq == 0 {
		return e, errors.New("event without a sequence number")
	}
	return e, nil
}

type segment struct {
	name  string
	first uint64
}

func segmentName(first uint64) string { return fmt.Sprintf("audit-%020d.log", first) }

// segments lists the segment files of dir by first sequence number.
func segments(dir string) ([]segment, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	var out []segment
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, "audit-") || !strings.HasSuffix(n, ".log") {
			continue
		}
		first, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(n, "audit-"), ".log"), 10, 64)
		if err != nil || first == 0 {
			return nil, fmt.Errorf("%w: unexpected file %s in %s", ErrCorrupt, n, dir)
		}
		out = append(out, segment{name: n, first: first})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].first < out[j].first })
	return out, nil
}

// repair reads the last segment, cuts off a torn last line, and returns
// the last sequence number in it (first-1 if none) and its size.
func repair(path string, first uint64) (uint64, int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	last := first - 1
	var good int64
	br := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, io.EOF) {
			break // a last line without its newline is torn; cut below
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			return 0, 0, fmt.Errorf("%w: %s: a line longer than %d bytes at offset %d", ErrCorrupt, path, br.Size(), good)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("audit: read %s: %w", path, err)
		}
		e, derr := decodeLine(line[:len(line)-1])
		if derr != nil {
			// A damaged line is a torn write only if nothing follows it.
			if rest, _ := io.ReadAll(br); len(bytes.TrimSpace(rest)) > 0 {
				return 0, 0, fmt.Errorf("%w: %s: offset %d: %v", ErrCorrupt, path, good, derr)
			}
			break
		}
		if e.Seq != last+1 {
			return 0, 0, fmt.Errorf("%w: %s: event %d follows %d", ErrCorrupt, path, e.Seq, last)
		}
		last = e.Seq
		good += int64(len(line))
	}
	if err := f.Truncate(good); err != nil {
		return 0, 0, fmt.Errorf("audit: repair %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return 0, 0, fmt.Errorf("audit: repair %s: %w", path, err)
	}
	return last, good, nil
}

// Read calls fn for every event on disk in dir with a sequence number of
// at least from, in order. It reads what has been written, which may stop
// short of what is being recorded.
func Read(dir string, from uint64, fn func(Event) error) error {
	segs, err := segments(dir)
	if err != nil {
		return err
	}
	for i, s := range segs {
		if i+1 < len(segs) && segs[i+1].first <= from {
			continue
		}
		if err := readSegment(filepath.Join(dir, s.name), from, fn); err != nil {
			return err
		}
	}
	return nil
}

func readSegment(path string, from uint64, fn func(Event) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxLineSize)
	for sc.Scan() {
		e, err := decodeLine(sc.Bytes())
		if err != nil {
			return nil // a line being written, or torn: the end of what is readable
		}
		if e.Seq < from {
			continue
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return sc.Err()
}
