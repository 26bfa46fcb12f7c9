package audit

import (
	"fmt"
	"reflect"
	"testing"
)

// Recent hands out the newest durable events exactly as Tail decodes them
// from the segments, and says when it does not hold them: older than the
// ring, nothing written since Open, or no ring configured.
func TestRecentMatchesTail(t *testing.T) {
	dir := t.TempDir()
	l := open(t, Config{Dir: dir, Recent: 8})
	for i := 0; i < 20; i++ {
		l.Record(Event{Actor: "spiffe://example.org/agent", Action: "x509.sign", Decision: Allow,
			Subject: fmt.Sprint("spiffe://example.org/w", i), Details: map[string]string{"serial": fmt.Sprint(i), "profile": "ecdsa"}})
	}
	l.Record(Event{Action: "entry.write", Decision: Deny, Reason: "no", Count: 3})
	if err := l.Sync(ctx(t)); err != nil {
		t.Fatal(err)
	}
	var fromDisk []Event
	if _, err := Tail(dir, Position{}, 1, func(e Event) error { fromDisk = append(fromDisk, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(fromDisk) != 21 {
		t.Fatalf("%d events on disk, want 21", len(fromDisk))
	}
	got, ok := l.Recent(14, 100, nil)
	if !ok || !reflect.DeepEqual(got, fromDisk[13:]) {
		t.Fatalf("Recent(14) = %v, %+v; want ok and\n%+v", ok, got, fromDisk[13:])
	}
	if got, ok := l.Recent(15, 2, nil); !ok || len(got) != 2 || got[0].Seq != 15 || got[1].Seq != 16 {
		t.Errorf("Recent(15, max 2) = %v, %+v", ok, got)
	}
	if got, ok := l.Recent(22, 10, nil); !ok || len(got) != 0 {
		t.Errorf("Recent(22) (nothing newer yet) = %v, %+v; want ok and none", ok, got)
	}
	for _, from := range []uint64{1, 13, 23} {
		if got, ok := l.Recent(from, 10, nil); ok {
			t.Errorf("Recent(%d) = ok, %d events: want not held (the ring keeps 14-21)", from, len(got))
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopened: nothing in memory until new events are durable.
	l = open(t, Config{Dir: dir, Recent: 8})
	defer l.Close()
	if _, ok := l.Recent(21, 10, nil); ok {
		t.Error("Recent after Open: want not held")
	}
	l.Record(Event{Action: "x509.sign", Decision: Allow})
	if err := l.Sync(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if got, ok := l.Recent(22, 10, nil); !ok || len(got) != 1 || got[0].Seq != 22 {
		t.Errorf("Recent(22) after a new event = %v, %+v", ok, got)
	}

	// No ring configured: never held.
	l0 := open(t, Config{Dir: t.TempDir()})
	defer l0.Close()
	l0.Record(Event{Action: "x509.sign", Decision: Allow})
	if err := l0.Sync(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, ok := l0.Recent(1, 10, nil); ok {
		t.Error("Recent without Config.Recent: want not held")
	}
}
