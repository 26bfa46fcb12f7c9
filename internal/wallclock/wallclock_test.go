package wallclock

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The time package's clock functions that read or wait on real time.
var realTime = map[string]bool{
	"Now": true, "Since": true, "Until": true, "After": true, "AfterFunc": true,
	"NewTimer": true, "NewTicker": true, "Tick": true, "Sleep": true,
}

// Production code of the server, agent and ca packages reads real time only
// through this package (or waits through internal/alarm), never through
// the time package directly: lifetimes, renewals and rotations run on the
// injected clock, and each real-time use is named.
func TestNoDirectWallClock(t *testing.T) {
	var found []string
	for _, dir := range []string{"../../server", "../../agent", "../../ca"} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, path, nil, 0)
			if err != nil {
				return err
			}
			timeName := ""
			for _, imp := range f.Imports {
				if imp.Path.Value == `"time"` {
					timeName = "time"
					if imp.Name != nil {
						timeName = imp.Name.Name
					}
				}
			}
			if timeName == "" {
				return nil
			}
			ast.Inspect(f, func(n ast.Node) bool {
				sel, ok := n.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				if x, ok := sel.X.(*ast.Ident); ok && x.Name == timeName && realTime[sel.Sel.Name] {
					found = append(found, fset.Position(sel.Pos()).String()+": time."+sel.Sel.Name)
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(found) > 0 {
		t.Errorf("real time read directly (use the injected clock, internal/alarm, or wallclock for deadlines, Raft timing and latencies):\n%s",
			strings.Join(found, "\n"))
	}
}

func TestWallClock(t *testing.T) {
	before := time.Now()
	if n := Now(); n.Before(before) {
		t.Errorf("Now() = %s, before %s", n, before)
	}
	if d := Since(before); d < 0 {
		t.Errorf("Since = %s", d)
	}
	if dl := Deadline(time.Hour); dl.Sub(before) < time.Hour {
		t.Errorf("Deadline(1h) = %s, less than an hour after %s", dl, before)
	}
}
