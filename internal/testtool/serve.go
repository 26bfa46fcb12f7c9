package testtool

import (
	"net"
	"sync"
	"testing"
)

// ServeTCP listens on a new loopback port and runs handle on every
// connection, each in its own goroutine, closing the connection when
// handle returns. When the test ends the listener is closed and every
// handler is waited for (handlers end when their peers close). It returns
// the address.
func ServeTCP(tb testing.TB, handle func(net.Conn)) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}
