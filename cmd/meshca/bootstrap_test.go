package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/server"
)

// A first start interrupted at any moment, by SIGKILL, SIGINT or SIGTERM,
// leaves a data directory that the next start finishes bootstrapping: it
// becomes ready, with a state hash, as if nothing had happened. The kill
// comes every 100 ms over the first two seconds, a new data directory each
// time.
func TestInterruptedFirstStartResumes(t *testing.T) {
	t.Parallel()
	bin := meshcaBinary(t)
	signals := []syscall.Signal{syscall.SIGKILL, syscall.SIGINT, syscall.SIGTERM}
	for i := 0; i < 20; i++ {
		at := time.Duration(i) * 100 * time.Millisecond
		sig := signals[i%len(signals)]
		t.Run(fmt.Sprintf("%s_at_%s", sig, at), func(t *testing.T) {
			env := testEnv(t)
			dataDir := shortTempDir(t)
			sock := filepath.Join(dataDir, server.AdminSocketName)
			args := []string{"server", "--bootstrap", "--trust-domain", "example.org", "--data-dir", dataDir, "--node-id", "s1",
				"--raft-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"}
			cmd := exec.Command(bin, args...)
			cmd.Env = []string{"HOME=" + env["HOME"], "PATH=" + os.Getenv("PATH")}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// The fault schedule: the signal lands at this offset into the start.
			time.Sleep(at)
			cmd.Process.Signal(sig)
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			select {
			case <-exited:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("meshca server did not stop within 20 s of %s", sig)
			}

			// The next start finishes what the first began.
			startServer(t, env, sock, args[1:]...)
			waitFor(t, 20*time.Second, "the restarted server is ready", func() (bool, string) {
				st, r := statusOf(t, env, sock)
				return r.code == exitOK && st.Ready && st.StateHash != "" && st.TrustDomain == "example.org", r.stdout + r.stderr
			})
		})
	}
}
