//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package store

// lockFile does nothing on this platform: a second opener of the stores is
// not detected, and blocks on bbolt's own lock of the log metadata instead.
func lockFile(string) (unlock func() error, err error) {
	return func() error { return nil }, nil
}
