package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// DefaultMaxSize bounds a policy's sources and its built bundle: 4 MiB.
const DefaultMaxSize = 4 << 20

// maxFiles bounds the files of one policy.
const maxFiles = 1000

// File is one source file of a policy, by its slash-separated path
// relative to the policy's directory.
type File struct {
	Path    string
	Content []byte
}

// InvalidError refuses a policy's sources: each problem with its file and
// line when there is one.
type InvalidError struct {
	Problems []string
}

func (e *InvalidError) Error() string {
	if len(e.Problems) == 1 {
		return "invalid policy: " + e.Problems[0]
	}
	return "invalid policy:\n  " + strings.Join(e.Problems, "\n  ")
}

// InvalidArgument classifies the error for internal/rpcerr.
func (e *InvalidError) InvalidArgument() bool { return true }

func invalid(format string, args ...any) *InvalidError {
	return &InvalidError{Problems: []string{fmt.Sprintf(format, args...)}}
}

// isRego and isData say which files a policy reads; others are ignored.
func isRego(p string) bool {
	return strings.HasSuffix(p, ".rego") && !strings.HasSuffix(p, "_test.rego")
}
func isData(p string) bool { b := path.Base(p); return b == "data.json" }

// ReadFiles reads a policy from a .rego file or a directory: every .rego
// file (tests, *_test.rego, excluded) and every data.json below it,
// sorted by path, at most maxSize bytes in all (0: DefaultMaxSize).
// Hidden files and directories are skipped.
func ReadFiles(root string, maxSize int64) ([]File, error) {
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	st, err := os.Stat(root)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		if !strings.HasSuffix(root, ".rego") {
			return nil, invalid("%s: a policy is a .rego file or a directory", root)
		}
		if st.Size() > maxSize {
			return nil, invalid("%s: %d bytes, over the bound of %d", root, st.Size(), maxSize)
		}
		b, err := os.ReadFile(root)
		if err != nil {
			return nil, err
		}
		return []File{{Path: filepath.Base(root), Content: b}}, nil
	}
	var files []File
	var total int64
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() || !(isRego(rel) || isData(rel)) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if total += info.Size(); total > maxSize {
			return invalid("%s: the policy's files are over the bound of %d bytes", root, maxSize)
		}
		if len(files) == maxFiles {
			return invalid("%s: more than %d files", root, maxFiles)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, File{Path: rel, Content: b})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, invalid("%s: no .rego or data.json file", root)
	}
	return files, nil
}

// parsed is a policy's sources, parsed and compiled.
type parsed struct {
	modules  map[string]*ast.Module
	data     map[string]any
	roots    []string
	compiler *ast.Compiler
}

// parse parses and compiles a policy's files: Rego v1 modules, data.json
// files (each a JSON object, placed at its directory's path). schemas, if
// not nil, type-checks references to input against the schema.
func parse(files []File, maxSize int64, schemas *ast.SchemaSet) (*parsed, error) {
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	var problems []string
	var total int64
	p := &parsed{modules: map[string]*ast.Module{}, data: map[string]any{}}
	rootSet := map[string]bool{}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	for i, f := range files {
		total += int64(len(f.Content))
		clean := path.Clean(f.Path)
		switch {
		case f.Path == "" || clean != f.Path || strings.HasPrefix(clean, "../") || strings.HasPrefix(clean, "/") || clean == "..":
			problems = append(problems, fmt.Sprintf("%q: not a relative path inside the policy", f.Path))
		case i > 0 && files[i-1].Path == f.Path:
			problems = append(problems, fmt.Sprintf("%s: given twice", f.Path))
		case isRego(f.Path):
			m, err := ast.ParseModuleWithOpts(f.Path, string(f.Content), ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true})
			if err != nil {
				problems = append(problems, astProblems(err)...)
				continue
			}
			p.modules[f.Path] = m
			if len(m.Package.Path) > 1 {
				rootSet[string(m.Package.Path[1].Value.(ast.String))] = true
			}
		case isData(f.Path):
			var v any
			dec := json.NewDecoder(bytes.NewReader(f.Content))
			dec.UseNumber()
			if err := dec.Decode(&v); err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", f.Path, err))
				continue
			}
			if dec.More() {
				problems = append(problems, fmt.Sprintf("%s: more than one JSON value", f.Path))
				continue
			}
			obj, ok := v.(map[string]any)
			if !ok {
				problems = append(problems, fmt.Sprintf("%s: data must be a JSON object, not %s", f.Path, jsonKind(v)))
				continue
			}
			dir := path.Dir(f.Path)
			if dir == "." {
				for k := range obj {
					rootSet[k] = true
				}
			} else {
				rootSet[strings.SplitN(dir, "/", 2)[0]] = true
			}
			if err := mergeData(p.data, dir, obj); err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", f.Path, err))
			}
		default:
			problems = append(problems, fmt.Sprintf("%s: neither a .rego file nor a data.json", f.Path))
		}
	}
	if total > maxSize {
		problems = append(problems, fmt.Sprintf("the policy's files are %d bytes, over the bound of %d", total, maxSize))
	}
	if len(p.modules) == 0 && len(problems) == 0 {
		problems = append(problems, "no Rego module")
	}
	if len(problems) > 0 {
		return nil, &InvalidError{Problems: problems}
	}
	c := ast.NewCompiler().WithSchemas(schemas).WithEnablePrintStatements(false)
	if schemas != nil {
		c = c.WithUseTypeCheckAnnotations(true)
	}
	c.Compile(p.modules)
	if c.Failed() {
		return nil, &InvalidError{Problems: astProblems(c.Errors)}
	}
	p.compiler = c
	for r := range rootSet {
		p.roots = append(p.roots, r)
	}
	sort.Strings(p.roots)
	return p, nil
}

// astProblems lists OPA's parse and compile errors as "file:line: message".
func astProblems(err error) []string {
	var errs ast.Errors
	if !errors.As(err, &errs) {
		return []string{err.Error()}
	}
	var out []string
	for _, e := range errs {
		if e.Location != nil {
			out = append(out, fmt.Sprintf("%s:%d: %s", e.Location.File, e.Location.Row, e.Message))
		} else {
			out = append(out, e.Message)
		}
	}
	return out
}

func jsonKind(v any) string {
	switch v.(type) {
	case []any:
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

// mergeData places obj at dir (slash-separated; "." is the root) in data.
func mergeData(data map[string]any, dir string, obj map[string]any) error {
	cur := data
	if dir != "." {
		for _, seg := range strings.Split(dir, "/") {
			next, ok := cur[seg]
			if !ok {
				m := map[string]any{}
				cur[seg] = m
				cur = m
				continue
			}
			m, ok := next.(map[string]any)
			if !ok {
				return fmt.Errorf("data at %s conflicts with a value of another data.json", dir)
			}
			cur = m
		}
	}
	for k, v := range obj {
		if _, dup := cur[k]; dup {
			return fmt.Errorf("key %q is defined by another data.json too", k)
		}
		cur[k] = v
	}
	return nil
}
