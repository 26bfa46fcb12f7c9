// Package deploy holds meshca's deployment files (Envoy bootstraps under
// envoy/) and the tests that decode them with the real configuration
// types, so that a file that no longer matches its schema fails the build's
// tests rather than a user's deployment. It has no Go API.
package deploy
