package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
)

// maxConfigSize bounds a --config file.
const maxConfigSize = 1 << 20

// loadConfigFile decodes the JSON configuration file path into v, a pointer
// to a struct whose fields carry json tags: the flags' names in snake_case.
// Unknown keys and trailing data are usage errors.
func loadConfigFile[T any](path string, v *T) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	if len(b) > maxConfigSize {
		return usageErrorf("config file %s is larger than %d bytes", path, maxConfigSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if key, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return usageErrorf("config file %s: unknown key %s (known keys: %s)", path, key, knownKeys(reflect.TypeFor[T]()))
		}
		return usageErrorf("config file %s is not a valid JSON object of settings: %v", path, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return usageErrorf("config file %s: unexpected data after the JSON object", path)
	}
	return nil
}

// resolveConfigPaths makes the relative paths among paths relative to the
// directory of the configuration file they were read from.
func resolveConfigPaths(configFile string, paths ...*string) {
	dir := filepath.Dir(configFile)
	for _, p := range paths {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

// knownKeys describes the JSON keys of the struct type t for an error
// message: its keys in field order, and for a key holding a list of
// objects, the keys of those objects.
func knownKeys(t reflect.Type) string {
	keys := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		k := f.Tag.Get("json")
		if f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct {
			k += " (a list of objects with the keys " + knownKeys(f.Type.Elem()) + ")"
		}
		keys = append(keys, k)
	}
	return strings.Join(keys, ", ")
}

// jsonKeys lists the JSON keys of the struct type T, in field order.
func jsonKeys[T any]() []string {
	t := reflect.TypeFor[T]()
	keys := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		keys = append(keys, t.Field(i).Tag.Get("json"))
	}
	return keys
}
