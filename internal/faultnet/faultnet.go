// Package faultnet is a fault-injecting network for tests of clusters that
// run in one process over real loopback TCP: every connection a node opens
// goes through its Dial, and Partition cuts the pairs of nodes it separates,
// refusing new connections and closing the open ones.
package faultnet

import (
	"context"
	"fmt"
	"net"
	"sync"
)

// Network tracks which nodes may reach which.
type Network struct {
	mu      sync.Mutex
	owner   map[string]string // listen address -> node name
	blocked map[[2]string]bool
	conns   map[[2]string][]net.Conn
}

// New returns a network in which every node reaches every other.
func New() *Network {
	return &Network{owner: map[string]string{}, blocked: map[[2]string]bool{}, conns: map[[2]string][]net.Conn{}}
}

// Register tells the network that node listens on addrs.
func (n *Network) Register(node string, addrs ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, a := range addrs {
		n.owner[a] = node
	}
}

func pair(a, b string) [2]string {
	if a > b {
		a, b = b, a
	}
	return [2]string{a, b}
}

// Dial returns the dial function of node from.
func (n *Network) Dial(from string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		n.mu.Lock()
		to, known := n.owner[addr]
		if known && n.blocked[pair(from, to)] {
			n.mu.Unlock()
			return nil, fmt.Errorf("faultnet: %s cannot reach %s (partitioned)", from, to)
		}
		n.mu.Unlock()
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil || !known {
			return c, err
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.blocked[pair(from, to)] {
			c.Close()
			return nil, fmt.Errorf("faultnet: %s cannot reach %s (partitioned)", from, to)
		}
		k := pair(from, to)
		n.conns[k] = append(n.conns[k], c)
		return c, nil
	}
}

// Partition separates group from every other registered node: no new
// connections between them, and the open ones are closed.
func (n *Network) Partition(group ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	in := map[string]bool{}
	for _, g := range group {
		in[g] = true
	}
	nodes := map[string]bool{}
	for _, o := range n.owner {
		nodes[o] = true
	}
	for a := range in {
		for b := range nodes {
			if in[b] {
				continue
			}
			k := pair(a, b)
			n.blocked[k] = true
			for _, c := range n.conns[k] {
				c.Close()
			}
			delete(n.conns, k)
		}
	}
}

// Heal lifts every partition.
func (n *Network) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.blocked = map[[2]string]bool{}
}
