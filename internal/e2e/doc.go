// Package e2e holds end-to-end tests that run servers and agents together
// in one process over real sockets: TCP on 127.0.0.1 with mutual TLS, the
// agents' Workload API Unix sockets, and go-spiffe's own Workload API client.
package e2e
