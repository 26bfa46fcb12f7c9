package testtool

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Ports handed to a process by number, not by an open listener, race with
// every other bind: a port the kernel handed out for "127.0.0.1:0" and the
// test closed again can be handed to the next caller of bind(0) or
// connect() anywhere on the machine before the child process binds it.
// FreePorts therefore picks below the kernel's ephemeral range, where
// neither bind(0) nor connect() ever allocates (Consul's sdk/freeport does
// the same), remembers what this process handed out, and checks each port
// by binding it. What is left is two test processes picking the same
// random port in the same instant.
const lowestPort = 10000

var (
	portsMu sync.Mutex
	handed  = map[int]bool{}
)

// FreePorts returns n distinct loopback addresses (127.0.0.1:port) that
// were free a moment ago, taken from outside the ephemeral port range so
// that no other socket on the machine is given one of them before the
// caller's process binds it. It fails the test when none can be found.
func FreePorts(tb testing.TB, n int) []string {
	tb.Helper()
	addrs, err := freePorts(n)
	if err != nil {
		tb.Fatal(err)
	}
	return addrs
}

// FreePort is FreePorts for one address.
func FreePort(tb testing.TB) string {
	tb.Helper()
	return FreePorts(tb, 1)[0]
}

// FreePortNumber is FreePort's port number, for callers outside a test
// (a helper process such as PostgreSQL that is configured by number).
func FreePortNumber() (int, error) {
	addrs, err := freePorts(1)
	if err != nil {
		return 0, err
	}
	_, p, _ := net.SplitHostPort(addrs[0])
	return strconv.Atoi(p)
}

func freePorts(n int) ([]string, error) {
	high := ephemeralLow() - 1
	if high <= lowestPort {
		return nil, fmt.Errorf("no port range below the ephemeral range (it starts at %d)", high+1)
	}
	portsMu.Lock()
	defer portsMu.Unlock()
	var addrs []string
	var held []net.Listener
	defer func() {
		for _, ln := range held {
			ln.Close()
		}
	}()
	for tries := 0; len(addrs) < n; tries++ {
		if tries > 1000 {
			return nil, fmt.Errorf("no free loopback port in %d-%d after %d tries", lowestPort, high, tries)
		}
		p := lowestPort + rand.IntN(high-lowestPort+1)
		if handed[p] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue // in use
		}
		held = append(held, ln)
		handed[p] = true
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's
// ip_local_port_range; IANA's 49152 elsewhere).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 49152
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 49152
	}
	low, err := strconv.Atoi(f[0])
	if err != nil {
		return 49152
	}
	return low
}
