// Package faultnet is a fault-injecting network for tests of clusters that
// run in one process over real loopback TCP: every connection a node opens
// goes through its Dial, and the network can cut or freeze the links
// between groups of nodes.
//
// Two faults, as a real network or host produces them:
//
//   - Partition cuts links: new connections are refused and the open ones
//     are closed, so both ends see errors at once (a killed process, a
//     firewall that rejects).
//   - Freeze blackholes links without closing them, as SIGSTOP of a process
//     or a dropped route does: connections stay open, nothing written is
//     delivered, reads wait, and only deadlines or a close end an operation.
//     New connections are accepted (the kernel completes the handshake of a
//     stopped process) and start frozen. Thaw delivers what was held, in
//     order, as a resumed process would.
package faultnet

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// Network tracks which nodes may reach which.
type Network struct {
	mu         sync.Mutex
	owner      map[string]string // listen address -> node name
	partitions []map[string]bool // groups cut off from every other node
	freezes    []map[string]bool // groups whose links to the others are frozen
	thaw       chan struct{}     // closed at the next Thaw
	conns      map[*conn]struct{}
}

// New returns a network in which every node reaches every other.
func New() *Network {
	return &Network{owner: map[string]string{}, thaw: make(chan struct{}), conns: map[*conn]struct{}{}}
}

// Register tells the network that node listens on addrs. Connections dialed
// to addrs before Register are subject to faults from then on.
func (n *Network) Register(node string, addrs ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, a := range addrs {
		n.owner[a] = node
	}
}

// separates reports whether one of the groups has a on one side and b on
// the other.
func separates(groups []map[string]bool, a, b string) bool {
	for _, g := range groups {
		if g[a] != g[b] {
			return true
		}
	}
	return false
}

// targetLocked returns the node a connection to addr reaches, if registered.
func (n *Network) targetLocked(addr string) (string, bool) {
	to, ok := n.owner[addr]
	return to, ok
}

func (n *Network) blockedLocked(from, addr string) (string, bool) {
	to, ok := n.targetLocked(addr)
	return to, ok && separates(n.partitions, from, to)
}

// Dial returns the dial function of node from.
func (n *Network) Dial(from string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		n.mu.Lock()
		to, blocked := n.blockedLocked(from, addr)
		n.mu.Unlock()
		if blocked {
			return nil, fmt.Errorf("faultnet: %s cannot reach %s (partitioned)", from, to)
		}
		var d net.Dialer
		raw, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		c := &conn{Conn: raw, net: n, from: from, addr: addr, closed: make(chan struct{}), deadlineSet: make(chan struct{})}
		n.mu.Lock()
		defer n.mu.Unlock()
		if to, blocked := n.blockedLocked(from, addr); blocked {
			raw.Close()
			return nil, fmt.Errorf("faultnet: %s cannot reach %s (partitioned)", from, to)
		}
		n.conns[c] = struct{}{}
		return c, nil
	}
}

func set(group []string) map[string]bool {
	g := map[string]bool{}
	for _, name := range group {
		g[name] = true
	}
	return g
}

// Partition separates group from every other node: no new connections
// between them, and the open ones are closed.
func (n *Network) Partition(group ...string) {
	n.mu.Lock()
	n.partitions = append(n.partitions, set(group))
	var victims []*conn
	for c := range n.conns {
		if _, blocked := n.blockedLocked(c.from, c.addr); blocked {
			victims = append(victims, c)
		}
	}
	n.mu.Unlock()
	for _, c := range victims {
		c.Close()
	}
}

// Freeze blackholes the links between group and every other node, leaving
// connections open (see the package documentation).
func (n *Network) Freeze(group ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.freezes = append(n.freezes, set(group))
}

// Thaw lifts every freeze: what was held is delivered.
func (n *Network) Thaw() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.freezes = nil
	close(n.thaw)
	n.thaw = make(chan struct{})
}

// Heal lifts every partition and every freeze.
func (n *Network) Heal() {
	n.Thaw()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.partitions = nil
}

// thawed returns nil when the link of c is not frozen, else a channel that
// is closed at the next Thaw.
func (n *Network) thawed(c *conn) chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	to, ok := n.targetLocked(c.addr)
	if !ok || !separates(n.freezes, c.from, to) {
		return nil
	}
	return n.thaw
}

func (n *Network) forget(c *conn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.conns, c)
}

// conn is a dialed connection subject to the network's faults.
type conn struct {
	net.Conn
	net        *Network
	from, addr string

	closeOnce sync.Once
	closed    chan struct{}

	mu          sync.Mutex // guards the deadlines and deadlineSet
	readDL      time.Time
	writeDL     time.Time
	deadlineSet chan struct{} // closed and replaced when a deadline changes

	readMu  sync.Mutex // serialises reads; guards held and heldErr
	held    []byte     // read from the socket while frozen, not yet delivered
	heldErr error
}

// wait blocks while the link is frozen, until it thaws, the deadline that
// dl returns passes, or the connection is closed.
func (c *conn) wait(dl func() time.Time) error {
	for {
		thaw := c.net.thawed(c)
		if thaw == nil {
			return nil
		}
		c.mu.Lock()
		deadline, changed := dl(), c.deadlineSet
		c.mu.Unlock()
		if err := c.waitOnce(thaw, changed, deadline); err != nil {
			return err
		}
	}
}

// waitOnce waits for the thaw, a deadline change, the deadline or the close.
func (c *conn) waitOnce(thaw, changed <-chan struct{}, deadline time.Time) error {
	var expired <-chan time.Time
	if !deadline.IsZero() {
		d := time.Until(deadline)
		if d <= 0 {
			return os.ErrDeadlineExceeded
		}
		t := time.NewTimer(d)
		defer t.Stop()
		expired = t.C
	}
	select {
	case <-thaw:
	case <-changed:
	case <-expired:
		return os.ErrDeadlineExceeded
	case <-c.closed:
		return net.ErrClosed
	}
	return nil
}

func (c *conn) readDeadline() time.Time  { return c.readDL }
func (c *conn) writeDeadline() time.Time { return c.writeDL }

// Read delivers nothing while the link is frozen: bytes that arrive are
// held until it thaws.
func (c *conn) Read(p []byte) (int, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	if len(c.held) == 0 && c.heldErr == nil {
		if err := c.wait(c.readDeadline); err != nil {
			return 0, err
		}
		n, err := c.Conn.Read(p)
		if n == 0 || c.net.thawed(c) == nil {
			return n, err
		}
		// Frozen while this read was under way: hold what came.
		c.held, c.heldErr = append(c.held[:0], p[:n]...), err
	}
	if err := c.wait(c.readDeadline); err != nil {
		return 0, err
	}
	n := copy(p, c.held)
	c.held = c.held[n:]
	if len(c.held) > 0 {
		return n, nil
	}
	err := c.heldErr
	c.held, c.heldErr = nil, nil
	return n, err
}

// Write sends nothing while the link is frozen: it waits for the thaw.
func (c *conn) Write(p []byte) (int, error) {
	if err := c.wait(c.writeDeadline); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (c *conn) setDeadlines(read, write bool, t time.Time) {
	c.mu.Lock()
	if read {
		c.readDL = t
	}
	if write {
		c.writeDL = t
	}
	close(c.deadlineSet)
	c.deadlineSet = make(chan struct{})
	c.mu.Unlock()
}

func (c *conn) SetDeadline(t time.Time) error {
	c.setDeadlines(true, true, t)
	return c.Conn.SetDeadline(t)
}

func (c *conn) SetReadDeadline(t time.Time) error {
	c.setDeadlines(true, false, t)
	return c.Conn.SetReadDeadline(t)
}

func (c *conn) SetWriteDeadline(t time.Time) error {
	c.setDeadlines(false, true, t)
	return c.Conn.SetWriteDeadline(t)
}

func (c *conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.closed)
		err = c.Conn.Close()
		c.net.forget(c)
	})
	return err
}
