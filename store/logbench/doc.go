// Package logbench measures the two Raft log stores meshca could use,
// github.com/hashicorp/raft-wal and github.com/hashicorp/raft-boltdb/v2, with
// their real fsyncs, on a temporary directory. It is a module of its own
// because raft-boltdb/v2 does not build with the raft v1.8.0 of the main
// module: here both stores run on raft v1.7.3, whose LogStore interface is
// the same. It has benchmarks only; store/README.md has the figures and the
// decision.
package logbench
