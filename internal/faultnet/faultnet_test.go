package faultnet

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echoNode listens on loopback and echoes what each connection sends.
func echoNode(t *testing.T, n *Network, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	n.Register(name, ln.Addr().String())
	return ln.Addr().String()
}

func dial(t *testing.T, n *Network, from, addr string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := n.Dial(from)(ctx, addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo = %q, %v; want %q", buf, err, msg)
	}
}

// A frozen link keeps its connections open but delivers nothing either way
// until it thaws; deadlines still end a blocked operation, and the thaw
// delivers everything in order.
func TestFreezeHoldsTrafficWithoutClosing(t *testing.T) {
	n := New()
	addr := echoNode(t, n, "b")
	c := dial(t, n, "a", addr)
	echo(t, c, "before")

	n.Freeze("b")
	// A write waits (nothing leaves), and its deadline ends the wait.
	c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Write([]byte("held")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write on a frozen link: %v, want a deadline error", err)
	}
	// A read started before the freeze delivers nothing either.
	done := make(chan error, 1)
	c.SetDeadline(time.Time{})
	go func() {
		buf := make([]byte, 6)
		_, err := io.ReadFull(c, buf)
		if err == nil && string(buf) != "thawed" {
			err = errors.New("read " + string(buf))
		}
		done <- err
	}()
	// New connections are accepted and start frozen.
	c2 := dial(t, n, "a", addr)
	c2.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c2.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read on a new frozen connection: %v, want a deadline error", err)
	}
	select {
	case err := <-done:
		t.Fatalf("a read on a frozen link returned: %v", err)
	default:
	}
	// Links not involving b are not frozen.
	other := echoNode(t, n, "c")
	echo(t, dial(t, n, "a", other), "unaffected")

	go func() {
		// Written while frozen: delivered at the thaw.
		c.SetWriteDeadline(time.Time{})
		c.Write([]byte("thawed"))
	}()
	n.Thaw()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the thaw did not deliver the held bytes")
	}
	c2.SetReadDeadline(time.Time{})
	echo(t, c2, "after")
}

// A partition closes the open connections and refuses new ones; Heal lifts it.
func TestPartitionClosesAndRefuses(t *testing.T) {
	n := New()
	addr := echoNode(t, n, "b")
	c := dial(t, n, "a", addr)
	echo(t, c, "before")
	n.Partition("a")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after the partition: %v, want the connection closed", err)
	}
	if _, err := n.Dial("a")(context.Background(), addr); err == nil {
		t.Fatal("dial across a partition succeeded")
	}
	n.Heal()
	echo(t, dial(t, n, "a", addr), "healed")
}
