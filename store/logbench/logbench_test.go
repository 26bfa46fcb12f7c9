package logbench

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
)

// opener opens a store under test in a new temporary directory and returns
// it, its directory and the func that closes it.
type opener func(b *testing.B) (ls raft.LogStore, dir string, closeStore func() error)

var stores = []struct {
	name string
	open opener
}{
	{"wal", openWAL},
	{"boltdb", openBolt},
}

// openWAL opens raft-wal with its defaults (64 MiB segments), as store.OpenRaft does.
func openWAL(b *testing.B) (raft.LogStore, string, func() error) {
	dir := b.TempDir()
	w, err := wal.Open(dir, wal.WithLogger(hclog.NewNullLogger()))
	if err != nil {
		b.Fatalf("wal.Open: %v", err)
	}
	return w, dir, w.Close
}

// openBolt opens raft-boltdb/v2 with its defaults (fsync on, bbolt's array freelist, synced).
func openBolt(b *testing.B) (raft.LogStore, string, func() error) {
	dir := b.TempDir()
	s, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		b.Fatalf("raftboltdb.New: %v", err)
	}
	return s, dir, s.Close
}

// entries returns n log entries of size random bytes each, with indexes from first.
func entries(first uint64, n, size int) []*raft.Log {
	logs := make([]*raft.Log, n)
	for i := range logs {
		data := make([]byte, size)
		rand.Read(data)
		logs[i] = &raft.Log{Index: first + uint64(i), Term: 1, Type: raft.LogCommand, Data: data, AppendedAt: time.Now()}
	}
	return logs
}

// renumber sets consecutive indexes from first on logs.
func renumber(logs []*raft.Log, first uint64) {
	for i, l := range logs {
		l.Index = first + uint64(i)
	}
}

// BenchmarkStoreLogs appends batches of entries, each StoreLogs call durable
// (fsynced) before it returns. One op is one StoreLogs call; entries/s counts
// entries. batch=64 is what a Raft leader writes at most per call
// (MaxAppendEntries).
func BenchmarkStoreLogs(b *testing.B) {
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			for _, batch := range []int{1, 64} {
				b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
					for _, size := range []int{256, 4096} {
						b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
							benchStoreLogs(b, st.open, batch, size)
						})
					}
				})
			}
		})
	}
}

func benchStoreLogs(b *testing.B, open opener, batch, size int) {
	ls, _, closeStore := open(b)
	defer closeStore()
	logs := entries(1, batch, size)
	next := uint64(1)
	b.SetBytes(int64(batch * size))
	for b.Loop() {
		renumber(logs, next)
		if err := ls.StoreLogs(logs); err != nil {
			b.Fatalf("StoreLogs: %v", err)
		}
		next += uint64(batch)
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkAppendLatency times each single-entry (256 B) append and reports
// the distribution: the commit latency one Raft write pays on the leader's
// disk.
func BenchmarkAppendLatency(b *testing.B) {
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			ls, _, closeStore := st.open(b)
			defer closeStore()
			benchLatency(b, ls, 1)
		})
	}
}

// benchLatency appends one 256-byte entry per op from index first and
// reports p50, p99 and max.
func benchLatency(b *testing.B, ls raft.LogStore, first uint64) {
	logs := entries(first, 1, 256)
	lat := make([]time.Duration, 0, 1<<15)
	next := first
	for b.Loop() {
		logs[0].Index = next
		start := time.Now()
		if err := ls.StoreLogs(logs); err != nil {
			b.Fatalf("StoreLogs: %v", err)
		}
		lat = append(lat, time.Since(start))
		next++
	}
	reportLatency(b, lat)
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	b.ReportMetric(us(lat[len(lat)/2]), "p50-µs")
	b.ReportMetric(us(lat[len(lat)*99/100]), "p99-µs")
	b.ReportMetric(us(lat[len(lat)-1]), "max-µs")
}

// BenchmarkAppendAfterTruncate fills the log with 128 MiB (32768 entries of
// 4 KiB), truncates all but the last entry as Raft does after a snapshot,
// then times single-entry appends as BenchmarkAppendLatency does. bbolt keeps
// the freed pages in its freelist and writes the whole freelist on every
// commit; raft-wal deletes whole segment files.
func BenchmarkAppendAfterTruncate(b *testing.B) {
	const (
		total = 32768
		size  = 4096
		chunk = 256
	)
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			ls, dir, closeStore := st.open(b)
			defer closeStore()
			logs := entries(1, chunk, size)
			for first := uint64(1); first <= total; first += chunk {
				renumber(logs, first)
				if err := ls.StoreLogs(logs); err != nil {
					b.Fatalf("filling: StoreLogs: %v", err)
				}
			}
			if err := ls.DeleteRange(1, total-1); err != nil {
				b.Fatalf("DeleteRange: %v", err)
			}
			benchLatency(b, ls, total+1)
			b.ReportMetric(dirMiB(b, dir), "disk-MiB")
		})
	}
}

// dirMiB is the apparent size of the files in dir, in MiB. raft-wal
// preallocates each 64 MiB segment.
func dirMiB(b *testing.B, dir string) float64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return float64(n) / (1 << 20)
}

// BenchmarkFsync is the floor: a 256-byte write plus one fsync of a plain
// file on the same filesystem. "grow" appends, so each fsync also commits
// the new file size; "overwrite" rewrites a file already written and synced,
// so each fsync commits data only. raft-wal's segments are preallocated
// (fallocate) and sit between the two.
func BenchmarkFsync(b *testing.B) {
	for _, mode := range []string{"grow", "overwrite"} {
		b.Run(mode, func(b *testing.B) {
			f, err := os.Create(filepath.Join(b.TempDir(), "f"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			const region = 64 << 20
			if mode == "overwrite" {
				if _, err := f.Write(make([]byte, region)); err != nil {
					b.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
			}
			buf := make([]byte, 256)
			lat := make([]time.Duration, 0, 1<<15)
			var off int64
			for b.Loop() {
				start := time.Now()
				if _, err := f.WriteAt(buf, off); err != nil {
					b.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				if off += int64(len(buf)); mode == "overwrite" && off+int64(len(buf)) > region {
					off = 0
				}
			}
			reportLatency(b, lat)
		})
	}
}
