package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmePath is README.md at the root of the repository.
const readmePath = "../../README.md"

// readmeShellBlocks returns the ```sh blocks of README.md, continuation
// lines joined.
func readmeShellBlocks(t *testing.T) []string {
	t.Helper()
	var blocks []string
	var cur []string
	in := false
	for _, line := range strings.Split(string(readFile(t, readmePath)), "\n") {
		switch {
		case !in && strings.TrimSpace(line) == "```sh":
			in, cur = true, nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			blocks = append(blocks, strings.ReplaceAll(strings.Join(cur, "\n"), "\\\n", " "))
		case in:
			cur = append(cur, line)
		}
	}
	if len(blocks) == 0 {
		t.Fatal("README.md has no sh blocks")
	}
	return blocks
}

// readmeInlineCommands returns the inline code spans of README.md's prose
// that are meshca command lines.
func readmeInlineCommands(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, m := range regexp.MustCompile("`((?:go run ./cmd/)?meshca [^`]+)`").FindAllStringSubmatch(string(readFile(t, readmePath)), -1) {
		out = append(out, m[1])
	}
	return out
}

// shellWords splits one shell command line into words, honouring single
// and double quotes, and ends it at a '#' that starts a word (a comment).
func shellWords(s string) []string {
	var words []string
	var w strings.Builder
	inWord, quote := false, byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			} else {
				w.WriteByte(c)
			}
		case c == '\'' || c == '"':
			quote, inWord = c, true
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case c == '#' && !inWord:
			return words
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words
}

// meshcaInvocations returns the argument lists of every meshca command in
// the shell text s: after "meshca" or "go run ./cmd/meshca", in a
// pipeline, a list or a command substitution, after any VAR=value.
func meshcaInvocations(s string) [][]string {
	// Command boundaries: newlines, ; && || | and $( ).
	for _, op := range []string{"$(", "&&", "||", ";", "|", ")"} {
		s = strings.ReplaceAll(s, op, "\n")
	}
	var out [][]string
	for _, line := range strings.Split(s, "\n") {
		words := shellWords(line)
		for len(words) > 0 && strings.Contains(words[0], "=") && !strings.HasPrefix(words[0], "-") {
			words = words[1:] // VAR=value before the command
		}
		switch {
		case len(words) >= 3 && words[0] == "go" && words[1] == "run" && words[2] == "./cmd/meshca":
			out = append(out, words[3:])
		case len(words) >= 1 && words[0] == "meshca":
			out = append(out, words[1:])
		}
	}
	return out
}

// TestREADMECommandsExist checks every meshca command line of README.md,
// in its shell blocks and its prose, against the program: each command
// exists, takes the flags and the number of arguments the README gives it.
func TestREADMECommandsExist(t *testing.T) {
	t.Parallel()
	var lines []string
	lines = append(lines, readmeShellBlocks(t)...)
	lines = append(lines, readmeInlineCommands(t)...)
	checked := 0
	for _, text := range lines {
		for _, args := range meshcaInvocations(text) {
			if len(args) > 0 && strings.HasPrefix(args[0], "<") {
				continue // `meshca <command> --help`
			}
			checked++
			root := (&app{stdout: &syncBuffer{}, stderr: &syncBuffer{}, getenv: func(string) string { return "" }, output: outputTable}).newRootCommand()
			cmd, rest, err := root.Find(args)
			if err != nil || cmd == root {
				t.Errorf("README: meshca %s: no such command (%v)", strings.Join(args, " "), err)
				continue
			}
			err = cmd.ParseFlags(rest)
			if err != nil && strings.Contains(err.Error(), "flag needs an argument") {
				// Prose names a flag without its value: `meshca x509 mint --addr`.
				err = cmd.ParseFlags(append(rest, "x"))
			}
			if err != nil {
				t.Errorf("README: meshca %s: %v (%s --help lists its flags)", strings.Join(args, " "), err, cmd.CommandPath())
				continue
			}
			if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
				t.Errorf("README: meshca %s: %v", strings.Join(args, " "), err)
			}
			if r := meshca(t, nil, append(strings.Fields(strings.TrimPrefix(cmd.CommandPath(), "meshca ")), "--help")...); r.code != exitOK {
				t.Errorf("meshca %s --help: exit %d", cmd.CommandPath(), r.code)
			}
		}
	}
	if checked < 20 {
		t.Errorf("checked only %d README command lines; is the parser broken?", checked)
	}
}

// TestREADMEQuickStart follows README.md as a new user would, on a fresh
// home directory: `go run ./cmd/meshca dev` exactly as the set-up block
// says, then, in another "terminal", every sh block that uses
// `go run ./cmd/meshca` (the quick start, offline minting, SM2), each
// command as written, with the binary built from this checkout standing
// for `go run ./cmd/meshca` (the same program, without a link per line).
// The blocks for a cluster on other machines (10.0.0.x, /var/lib) cannot
// run here; TestREADMECommandsExist checks their command lines.
func TestREADMEQuickStart(t *testing.T) {
	t.Parallel()
	requireOpenSSL(t)
	bin := meshcaBinary(t)
	blocks := readmeShellBlocks(t)
	setup := blocks[0]
	if !strings.Contains(setup, "go run ./cmd/meshca dev ") || !strings.Contains(setup, "make test ") {
		t.Fatalf("README's set-up block is not `go run ./cmd/meshca dev` and `make test`:\n%s", setup)
	}
	home := shortTempDir(t)
	// The go tool keeps its caches under the real home: give it them, or
	// a new home means building everything from scratch.
	goEnv, err := exec.Command("go", "env", "GOCACHE", "GOMODCACHE", "GOPATH").Output()
	if err != nil {
		t.Fatal(err)
	}
	ge := strings.Split(strings.TrimSpace(string(goEnv)), "\n")
	env := append(processEnv("HOME="+home), "XDG_DATA_HOME=", "SPIFFE_ENDPOINT_SOCKET=", "GOCACHE="+ge[0], "GOMODCACHE="+ge[1], "GOPATH="+ge[2])
	leftovers := map[string]bool{}
	for _, p := range []string{"svid", "api", "offline-ca", "sm2"} {
		_, err := os.Stat(filepath.Join("../..", p))
		leftovers[p] = err == nil
	}

	// go run ./cmd/meshca dev, from the root of the checkout.
	stdout := filepath.Join(t.TempDir(), "dev.out")
	out, err := os.Create(stdout)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	dev := exec.Command("go", "run", "./cmd/meshca", "dev")
	dev.Dir, dev.Env, dev.Stdout, dev.Stderr = "../..", env, out, out
	dev.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // go run and its child, stopped together
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- dev.Wait() }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		// Ctrl-C, as the README says, to meshca dev itself: go run, its
		// parent, then exits with dev's status.
		for _, pid := range childPIDs(dev.Process.Pid) {
			syscall.Kill(pid, syscall.SIGINT)
		}
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			syscall.Kill(-dev.Process.Pid, syscall.SIGKILL)
			<-done
			return errTimeout
		}
	}
	t.Cleanup(func() { stop() })
	waitFor(t, 3*time.Minute, "meshca dev prints what to run next", func() (bool, string) {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("meshca dev exited: %v\n%s", err, readFile(t, stdout))
		default:
		}
		b := readFile(t, stdout)
		return strings.Contains(string(b), "Next, in another terminal"), string(b)
	})

	ran := 0
	for _, block := range blocks[1:] {
		if !strings.Contains(block, "go run ./cmd/meshca") {
			continue
		}
		ran++
		script := strings.ReplaceAll(block, "go run ./cmd/meshca", bin)
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
		cmd.Dir, cmd.Env = t.TempDir(), env
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("README block failed: %v\n%s\noutput:\n%s", err, block, b)
			continue
		}
		if n := strings.Count(block, "openssl verify"); strings.Count(string(b), ": OK") < n {
			t.Errorf("README block: %d openssl verify, fewer OK:\n%s\noutput:\n%s", n, block, b)
		}
	}
	if ran < 3 {
		t.Errorf("ran %d README blocks, want the quick start, offline minting and SM2", ran)
	}
	// Nothing was written into the checkout or the working directory.
	for p, was := range leftovers {
		if _, err := os.Stat(filepath.Join("../..", p)); err == nil && !was {
			t.Errorf("following the README left %s in the checkout", p)
		}
	}
	if _, err := os.Stat(filepath.Join(home, "meshca-demo", "svid", "key.pem")); err != nil {
		t.Errorf("the quick start wrote no key under ~/meshca-demo: %v", err)
	}
	if err := stop(); err != nil {
		t.Errorf("meshca dev after Ctrl-C: %v\n%s", err, readFile(t, stdout))
	}
}

// childPIDs returns the PIDs of the children of process pid.
func childPIDs(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "children"))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, w := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(w); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

type timeoutError struct{}

func (timeoutError) Error() string { return "did not stop within 30 s of SIGINT" }

var errTimeout = timeoutError{}
