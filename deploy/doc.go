// Package deploy holds meshca's deployment files (Kubernetes manifests under
// kubernetes/, systemd units under systemd/, Envoy bootstraps under envoy/;
// see README.md) and the tests that decode them with the real configuration
// types, so that a file that no longer matches its schema fails the build's
// tests rather than a user's deployment. It has no Go API.
package deploy
