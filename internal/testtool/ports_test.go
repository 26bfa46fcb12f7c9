package testtool

import (
	"net"
	"strconv"
	"testing"
)

// TestFreePortsOutsideTheEphemeralRange: the ports are distinct across
// calls, bindable, and never ones bind(0) could hand to another socket.
func TestFreePortsOutsideTheEphemeralRange(t *testing.T) {
	low := ephemeralLow()
	seen := map[string]bool{}
	for range 20 {
		for _, a := range FreePorts(t, 3) {
			if seen[a] {
				t.Fatalf("%s handed out twice", a)
			}
			seen[a] = true
			_, ps, err := net.SplitHostPort(a)
			if err != nil {
				t.Fatal(err)
			}
			p, _ := strconv.Atoi(ps)
			if p < lowestPort || p >= low {
				t.Fatalf("port %d is outside %d-%d", p, lowestPort, low-1)
			}
			ln, err := net.Listen("tcp", a)
			if err != nil {
				t.Fatalf("%s is not free: %v", a, err)
			}
			ln.Close()
		}
	}
}
