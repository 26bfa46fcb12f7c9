package cluster

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/internal/faultnet"
)

// The fault suite: a leader frozen (its links blackholed, connections left
// open, as SIGSTOP does), partitioned (connections cut) or killed, for
// faultDuration under a steady ledger load through every server, on 3
// servers and, with a follower taken along, on 5. It asserts the bounds of
// design.md: on the majority side, no server goes longer than maxGap
// without committing; on the minority side every write ends, refused with
// an error naming the cause, within maxRefusal of the fault (or of its own
// start); and afterwards every acknowledged record is on every server,
// once, with equal state hashes.
const (
	faultDuration = 10 * time.Second
	maxGap        = 3 * time.Second
	maxRefusal    = 3 * time.Second
	// callTimeout bounds each write of the load: long enough that a write
	// which waits for its deadline instead of being refused stands out.
	callTimeout = 10 * time.Second
)

type faultKind int

const (
	freeze faultKind = iota
	partition
	kill
)

func (k faultKind) String() string {
	return [...]string{"freeze", "partition", "kill"}[k]
}

// call is one write of the load.
type call struct {
	node       string
	serial     string
	start, end time.Time
	err        error
}

// faultLoad commits ledger records in a loop through every node and keeps
// the outcome of every call.
type faultLoad struct {
	mu    sync.Mutex
	calls []call
	acked map[string]bool
	tried map[string]bool
}

// loadPace spaces each writer's calls: fast enough to measure gaps to a
// few milliseconds, slow enough that the load leaves Raft the CPU it needs
// for its heartbeats on a small machine.
const loadPace = 5 * time.Millisecond

func (l *faultLoad) run(ctx context.Context, n *testNode, prefix string) {
	tick := time.NewTicker(loadPace)
	defer tick.Stop()
	for i := 0; ctx.Err() == nil; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		serial := fmt.Sprintf("%s-%06d", prefix, i)
		l.mu.Lock()
		l.tried[serial] = true
		l.mu.Unlock()
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		start := time.Now()
		err := n.node.CommitLedger(cctx, record(serial))
		end := time.Now()
		cancel()
		if ctx.Err() != nil && err != nil {
			return // stopped by the test, not refused
		}
		l.mu.Lock()
		l.calls = append(l.calls, call{node: n.id, serial: serial, start: start, end: end, err: err})
		if err == nil {
			l.acked[serial] = true
		}
		l.mu.Unlock()
		if err != nil {
			// A refused write is retried at once by a real client too, but
			// not in a tight loop.
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

func (l *faultLoad) ackedSince(node string, since time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.calls {
		if c.node == node && c.err == nil && !c.end.Before(since) {
			n++
		}
	}
	return n
}

// describe lists node's calls that ended within [from, to]: when they
// started and ended (relative to from) and how.
func (l *faultLoad) describe(node string, from, to time.Time) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, c := range l.calls {
		if c.node != node || c.end.Before(from) || c.end.After(to) {
			continue
		}
		outcome := "ok"
		if c.err != nil {
			outcome = c.err.Error()
		}
		out = append(out, fmt.Sprintf("[%s..%s %s]", c.start.Sub(from).Round(time.Millisecond), c.end.Sub(from).Round(time.Millisecond), outcome))
	}
	if len(out) > 12 {
		out = append(out[:6], append([]string{"..."}, out[len(out)-6:]...)...)
	}
	return strings.Join(out, " ")
}

// gap returns the longest time within [from, to] during which node
// acknowledged no write.
func (l *faultLoad) gap(node string, from, to time.Time) time.Duration {
	l.mu.Lock()
	var acks []time.Time
	for _, c := range l.calls {
		if c.node == node && c.err == nil {
			acks = append(acks, c.end)
		}
	}
	l.mu.Unlock()
	slices.SortFunc(acks, func(a, b time.Time) int { return a.Compare(b) })
	longest, last := time.Duration(0), from
	for _, a := range acks {
		if a.Before(from) {
			continue
		}
		if a.After(to) {
			break
		}
		longest = max(longest, a.Sub(last))
		last = a
	}
	return max(longest, to.Sub(last))
}

type faultResult struct {
	elected   time.Duration // fault to a new leader on the majority side
	gap       time.Duration // longest majority-side gap
	refusal   time.Duration // longest minority-side call
	acked     int
	minority  int // minority calls checked
	elections int // terms the majority went through during the fault
}

// isolatedCause reports whether err says why a write cannot be served:
// there is no leader, or no quorum.
func isolatedCause(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "no leader") || strings.Contains(msg, "quorum")
}

// runFault runs one fault on a fresh cluster of size servers: the leader,
// and the first `followers` followers with it, are frozen, partitioned or
// killed for dur.
// The caller holds the fault tests' turn (faultnet.Serialize).
func runFault(t testing.TB, size, followers int, kind faultKind, dur time.Duration) faultResult {
	c := newTestCluster(t, size, clusterOpts{})
	load := &faultLoad{acked: map[string]bool{}, tried: map[string]bool{}}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		for k := 0; k < 2; k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				load.run(ctx, n, fmt.Sprintf("%s-w%d", n.id, k))
			}()
		}
	}
	// Warm up: every server commits.
	begin := time.Now()
	waitFor(t, 20*time.Second, "every server commits before the fault", func() bool {
		for _, n := range c.nodes {
			if load.ackedSince(n.id, begin) < 20 {
				return false
			}
		}
		return true
	})

	leader := c.leader()
	if leader == nil {
		t.Fatal("no leader before the fault")
	}
	minority := []*testNode{leader}
	var majority []*testNode
	for _, n := range c.nodes {
		if n == leader {
			continue
		}
		if len(minority) <= followers {
			minority = append(minority, n)
		} else {
			majority = append(majority, n)
		}
	}
	var names []string
	for _, n := range minority {
		names = append(names, n.id)
	}

	termOf := func(n *testNode) int {
		term, _ := strconv.Atoi(n.node.Raft().Stats()["term"])
		return term
	}
	termBefore := termOf(majority[0])
	faultStart := time.Now()
	switch kind {
	case freeze:
		c.net.Freeze(names...)
	case partition:
		c.net.Partition(names...)
	case kill:
		for _, n := range minority {
			n.stop()
		}
	}
	var res faultResult
	elected := make(chan time.Duration, 1)
	go func() {
		for {
			for _, n := range majority {
				if n.node.IsLeader() {
					elected <- time.Since(faultStart)
					return
				}
			}
			if time.Since(faultStart) > dur {
				elected <- -1
				return
			}
			time.Sleep(5 * time.Millisecond) // polling a state that has no event
		}
	}()
	select {
	case <-time.After(dur): // the fault lasts this long
	case <-ctx.Done():
	}
	faultEnd := time.Now()
	res.elected = <-elected
	res.elections = termOf(majority[0]) - termBefore
	switch kind {
	case freeze, partition:
		c.net.Heal()
	case kill:
		for _, n := range minority {
			n.start()
		}
	}

	// Recovery: every server, the minority's too, commits again.
	healed := time.Now()
	waitFor(t, 30*time.Second, "every server commits after the heal", func() bool {
		for _, n := range c.nodes {
			if load.ackedSince(n.id, healed) < 20 {
				return false
			}
		}
		return true
	})
	stop()
	wg.Wait()

	for _, n := range majority {
		g := load.gap(n.id, faultStart, faultEnd)
		res.gap = max(res.gap, g)
		if g > maxGap {
			t.Errorf("%s %s: %s (majority) committed nothing for %s during the fault; want at most %s; its calls then: %s", kind, names, n.id, g.Round(time.Millisecond), maxGap,
				load.describe(n.id, faultStart, faultStart.Add(g+time.Second)))
		}
	}
	if kind != kill {
		load.mu.Lock()
		for _, cl := range load.calls {
			isMinority := slices.ContainsFunc(minority, func(n *testNode) bool { return n.id == cl.node })
			if !isMinority || cl.end.Before(faultStart) || cl.start.After(faultEnd) {
				continue
			}
			from := cl.start
			if from.Before(faultStart) {
				from = faultStart
			}
			took := cl.end.Sub(from)
			res.refusal = max(res.refusal, took)
			res.minority++
			if cl.err == nil {
				continue // committed before the fault took hold
			}
			if took > maxRefusal {
				t.Errorf("%s %s: a write on %s (minority) took %s to fail (%v); want a refusal within %s", kind, names, cl.node, took.Round(time.Millisecond), cl.err, maxRefusal)
			} else if !isolatedCause(cl.err) && cl.start.After(faultStart.Add(time.Second)) {
				t.Errorf("%s %s: a write on %s (minority) failed with %q, which names neither a missing leader nor quorum", kind, names, cl.node, cl.err)
			}
		}
		load.mu.Unlock()
	}

	// Every acknowledged record on every server, once.
	c.requireConverged()
	for _, n := range c.nodes {
		r := n.node.FSM().Read()
		present := 0
		for serial := range load.tried {
			if r.LedgerRecord([]byte(serial)) != nil {
				present++
			} else if load.acked[serial] {
				t.Fatalf("%s lost acknowledged record %s", n.id, serial)
			}
		}
		if got := r.LedgerLen(); got != present {
			t.Errorf("%s holds %d records for %d distinct serials", n.id, got, present)
		}
	}
	res.acked = len(load.acked)
	t.Logf("%s of %v on %d servers for %s: new leader after %s (%d elections); majority gap %s (bound %s); longest minority call %s over %d calls (bound %s); %d records acknowledged, all on every server once",
		kind, names, size, dur, res.elected.Round(time.Millisecond), res.elections, res.gap.Round(time.Millisecond), maxGap,
		res.refusal.Round(time.Millisecond), res.minority, maxRefusal, res.acked)
	return res
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFaultLeaderFrozen(t *testing.T) {
	faultnet.Serialize(t)
	runFault(t, 3, 0, freeze, faultDuration)
}

func TestFaultLeaderPartitioned(t *testing.T) {
	faultnet.Serialize(t)
	runFault(t, 3, 0, partition, faultDuration)
}

func TestFaultLeaderKilled(t *testing.T) {
	faultnet.Serialize(t)
	runFault(t, 3, 0, kill, faultDuration)
}

func TestFaultLeaderAndFollowerFrozen(t *testing.T) {
	faultnet.Serialize(t)
	runFault(t, 5, 1, freeze, faultDuration)
}

func TestFaultLeaderAndFollowerPartitioned(t *testing.T) {
	faultnet.Serialize(t)
	runFault(t, 5, 1, partition, faultDuration)
}

// BenchmarkFaultGap repeats each fault of the suite on a fresh 3-server
// cluster (a 4 s fault: longer than any failover) and reports the
// majority's longest commit gap, the time to a new leader and the longest
// minority call, p50 and max over the repetitions:
//
//	go test ./server/cluster -run '^$' -bench FaultGap -benchtime 5x
func BenchmarkFaultGap(b *testing.B) {
	for _, kind := range []faultKind{freeze, partition, kill} {
		b.Run(kind.String(), func(b *testing.B) {
			faultnet.Serialize(b) // once: the turn is held until b ends
			var gaps, elections, refusals []time.Duration
			for i := 0; i < b.N; i++ {
				r := runFault(b, 3, 0, kind, 4*time.Second)
				gaps, elections, refusals = append(gaps, r.gap), append(elections, r.elected), append(refusals, r.refusal)
			}
			report := func(name string, d []time.Duration) {
				slices.Sort(d)
				b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, name+"-p50-ms")
				b.ReportMetric(float64(d[len(d)-1].Microseconds())/1000, name+"-max-ms")
			}
			report("gap", gaps)
			report("election", elections)
			if kind != kill {
				report("minority", refusals)
			}
		})
	}
}

// A leader that was away long is reachable again as soon as it is elected:
// every follower forwards to it within maxGap, whatever backoff its
// reconnection attempts built up while it was away.
func TestForwardingReachesLeaderBackFromLongAbsence(t *testing.T) {
	const absence = 17 * time.Second // long enough for gRPC's default backoff to reach 10 s
	faultnet.Serialize(t)
	c := newTestCluster(t, 3, clusterOpts{})
	load := &faultLoad{acked: map[string]bool{}, tried: map[string]bool{}}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			load.run(ctx, n, n.id)
		}()
	}
	defer wg.Wait()
	defer stop()
	begin := time.Now()
	waitFor(t, 20*time.Second, "every server commits", func() bool {
		for _, n := range c.nodes {
			if load.ackedSince(n.id, begin) < 20 {
				return false
			}
		}
		return true
	})
	away := c.leader()
	away.stop()
	select {
	case <-time.After(absence): // the absence lasts this long
	case <-ctx.Done():
	}
	away.start()
	current := c.leader()
	if current != nil {
		target := current.node.Raft().LastIndex()
		waitFor(t, 30*time.Second, away.id+" catches up", func() bool { return away.node.Raft().AppliedIndex() >= target })
	}
	if current == nil || current == away {
		t.Fatalf("leader after the absence: %v", current)
	}
	if err := current.node.Raft().LeadershipTransferToServer(raft.ServerID(away.id), raft.ServerAddress(away.raftAddr)).Error(); err != nil {
		t.Fatalf("transfer leadership back to %s: %v", away.id, err)
	}
	waitFor(t, 10*time.Second, away.id+" leads again", away.node.IsLeader)
	back := time.Now()
	for _, n := range c.nodes {
		if n == away {
			continue
		}
		waitFor(t, 30*time.Second, n.id+" commits through "+away.id, func() bool { return load.ackedSince(n.id, back) > 0 })
		if took := time.Since(back); took > maxGap {
			t.Errorf("%s forwarded to %s, leader again after %s away, only %s after its election; want at most %s", n.id, away.id, absence, took.Round(time.Millisecond), maxGap)
		} else {
			t.Logf("%s commits through %s %s after its election", n.id, away.id, took.Round(time.Millisecond))
		}
	}
}
