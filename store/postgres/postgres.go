// Package postgres keeps meshca's history in PostgreSQL (through
// github.com/jackc/pgx/v5): every certificate the cluster issued, exported
// from the Raft ledger, and every audit event of every server, so that they
// outlive the Raft state's hot window and can be queried.
//
// The schema is versioned and embedded (migrations/NNNN_name.sql); Open
// applies the migrations the database lacks, under an advisory lock, and
// refuses a database whose schema is newer than this binary knows.
//
// Export is exactly once: rows are written with COPY in the same
// transaction that moves their cursor (the Raft index of the last ledger
// block exported; each server's last audit sequence number), after
// checking that the cursor is still where the exporter read it. A crash at
// any point leaves either the rows and the cursor or neither, and two
// exporters racing cannot both write the same rows: the second finds the
// cursor moved (ErrCursorMoved) and re-reads it.
package postgres

import (
	"context"
	"crypto/x509"
	"embed"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Config configures a Store.
type Config struct {
	// DSN is a PostgreSQL URL or keyword/value connection string
	// (postgres://user:password@host:port/db?sslmode=verify-full).
	DSN string
	// CAFile, when set, is a PEM file of the CAs that sign PostgreSQL's
	// server certificate; the DSN must then ask for sslmode=verify-ca or
	// verify-full. (sslrootcert in the DSN works too.)
	CAFile string
	// MaxConns bounds the pool. Default 4.
	MaxConns int32
}

// ErrMalformedDSN means the DSN (or the CA file it needs) cannot be used.
// Its message never holds the password.
var ErrMalformedDSN = errors.New("postgres: malformed DSN")

// ErrSchemaTooNew means the database's schema is newer than this binary
// knows: a newer meshca migrated it. Nothing was changed.
var ErrSchemaTooNew = errors.New("postgres: the database schema is newer than this meshca knows")

// AuthError means PostgreSQL refused the role's credentials.
type AuthError struct {
	Role, Host, Database string
	// Message is PostgreSQL's message (which names the role, never the
	// password).
	Message string
}

func (e *AuthError) Error() string {
	return fmt.Sprintf("postgres: authentication failed for role %q at %s (database %q): %s; check the role's password in the DSN",
		e.Role, e.Host, e.Database, e.Message)
}

// Store is a pool of connections to the history database.
type Store struct {
	pool    *pgxpool.Pool
	display string
}

var (
	urlPassword = regexp.MustCompile(`(://[^/@]*?:)[^@]*@`)
	kvPassword  = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)`)
)

// redact removes what may be a password from a connection string or an
// error about one.
func redact(s string) string {
	s = urlPassword.ReplaceAllString(s, "${1}xxxxx@")
	return kvPassword.ReplaceAllString(s, "${1}xxxxx")
}

// ParseConfig checks cfg and returns the pool configuration, without
// connecting. Errors wrap ErrMalformedDSN and never hold the password.
func ParseConfig(cfg Config) (*pgxpool.Config, error) {
	if strings.TrimSpace(cfg.DSN) == "" {
		return nil, fmt.Errorf("%w: empty", ErrMalformedDSN)
	}
	pc, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("%w: %s (want postgres://user:password@host:port/database?sslmode=verify-full, or key=value pairs)",
			ErrMalformedDSN, parseProblem(err, cfg.DSN))
	}
	if cfg.CAFile != "" {
		if pc.ConnConfig.TLSConfig == nil || pc.ConnConfig.TLSConfig.InsecureSkipVerify && pc.ConnConfig.TLSConfig.VerifyPeerCertificate == nil {
			return nil, fmt.Errorf("%w: a CA file needs sslmode=verify-ca or sslmode=verify-full in the DSN", ErrMalformedDSN)
		}
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: CA file: %v", ErrMalformedDSN, err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: CA file %s holds no PEM certificate", ErrMalformedDSN, cfg.CAFile)
		}
		for _, t := range append([]*pgconn.FallbackConfig{{TLSConfig: pc.ConnConfig.TLSConfig}}, pc.ConnConfig.Fallbacks...) {
			if t.TLSConfig != nil {
				t.TLSConfig.RootCAs = roots
			}
		}
	}
	if cfg.MaxConns > 0 {
		pc.MaxConns = cfg.MaxConns
	} else {
		pc.MaxConns = 4
	}
	pc.ConnConfig.ConnectTimeout = 5 * time.Second
	return pc, nil
}

var quoted = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'[^']*'|`[^`]*`")

// parseProblem says what pgx found wrong with a DSN without repeating any
// of it: pgx's own message (e.g. "invalid port"), without the connection
// string and the underlying error (both may quote the password when the
// DSN is malformed), quoted parts removed.
func parseProblem(err error, dsn string) string {
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return "cannot be parsed"
	}
	full := pe.Error()
	i := strings.LastIndex(full, "`: ")
	if i < 0 {
		return "cannot be parsed"
	}
	msg := full[i+3:]
	if c := pe.Unwrap(); c != nil {
		msg = strings.TrimSuffix(msg, " ("+c.Error()+")")
	}
	return redactWith(quoted.ReplaceAllString(msg, `"..."`), dsn)
}

// redactWith redacts an error message about dsn: the generic patterns,
// and the password itself if one can be found in dsn.
func redactWith(msg, dsn string) string {
	msg = redact(msg)
	if m := urlPassword.FindStringSubmatch(dsn); m != nil {
		if pw := strings.TrimSuffix(strings.TrimPrefix(m[0], m[1]), "@"); pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
	}
	if m := kvPassword.FindStringSubmatch(dsn); m != nil && m[2] != "" {
		msg = strings.ReplaceAll(msg, m[2], "xxxxx")
	}
	return msg
}

// Describe names the database a configuration points at, for logs:
// user@host:port/database, without the password.
func Describe(pc *pgxpool.Config) string {
	c := pc.ConnConfig
	return fmt.Sprintf("%s@%s/%s", c.User, net.JoinHostPort(c.Host, strconv.Itoa(int(c.Port))), c.Database)
}

// New returns a Store for cfg without connecting: a database that is down
// is found on first use. Connect checks it and migrates the schema.
func New(cfg Config) (*Store, error) {
	pc, err := ParseConfig(cfg)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, fmt.Errorf("postgres %s: %w", Describe(pc), err)
	}
	return &Store{pool: pool, display: Describe(pc)}, nil
}

// Open returns a Store for cfg, connected and with its schema migrated.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	s, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if err := s.Migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// String names the database, without the password.
func (s *Store) String() string { return s.display }

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Pool is the connection pool (for tests and tools).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// classify turns PostgreSQL's refusal of the credentials into an
// AuthError; other errors are wrapped with the database's name.
func (s *Store) classify(err error) error {
	if err == nil {
		return nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "28P01" || pe.Code == "28000") {
		c := s.pool.Config().ConnConfig
		return &AuthError{Role: c.User, Host: net.JoinHostPort(c.Host, strconv.Itoa(int(c.Port))), Database: c.Database, Message: pe.Message}
	}
	// pgconn's errors name the user and database, never the password.
	if pe == nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return &UnavailableError{Database: s.display, Err: err}
	}
	return fmt.Errorf("postgres %s: %w", s.display, err)
}

// UnavailableError means the database could not be reached or the
// connection broke: nothing was done, and retrying later may succeed.
type UnavailableError struct {
	Database string
	Err      error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("postgres %s unavailable: %v", e.Database, e.Err)
}

// Unwrap returns the cause.
func (e *UnavailableError) Unwrap() error { return e.Err }

// Unavailable marks the error as transient (see internal/rpcerr).
func (e *UnavailableError) Unavailable() bool { return true }

// IsAuth reports whether err is PostgreSQL refusing the credentials: a
// configuration error, not an outage.
func IsAuth(err error) bool {
	var ae *AuthError
	return errors.As(err, &ae)
}

type migration struct {
	version int
	name    string
	sql     string
}

var migrationName = regexp.MustCompile(`^(\d{4})_[a-z0-9_]+\.sql$`)

func migrations() []migration {
	entries, err := migrationFiles.ReadDir("migrations")
	if err != nil {
		panic(err)
	}
	var out []migration
	for _, e := range entries {
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil {
			panic("postgres: migration file name " + e.Name())
		}
		v, _ := strconv.Atoi(m[1])
		b, err := migrationFiles.ReadFile("migrations/" + e.Name())
		if err != nil {
			panic(err)
		}
		out = append(out, migration{version: v, name: e.Name(), sql: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i, m := range out {
		if m.version != i+1 {
			panic(fmt.Sprintf("postgres: migration %s out of sequence", m.name))
		}
	}
	return out
}

// SchemaVersion is the schema version this binary knows and migrates to.
func SchemaVersion() int { return len(migrations()) }

// migrationLock is the advisory lock key under which servers migrate.
const migrationLock = 0x6d657368 // "mesh"

// Migrate applies the migrations the database lacks, in one transaction
// under an advisory lock (servers starting together migrate
// once). A database with a newer schema is refused with ErrSchemaTooNew.
func (s *Store) Migrate(ctx context.Context) error {
	return s.classify(pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS meshca_schema (
			version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
		var have int
		if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM meshca_schema").Scan(&have); err != nil {
			return err
		}
		ms := migrations()
		if have > len(ms) {
			return fmt.Errorf("%w: database at version %d, this binary knows %d", ErrSchemaTooNew, have, len(ms))
		}
		for _, m := range ms[have:] {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return fmt.Errorf("migration %s: %w", m.name, err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO meshca_schema (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
				return err
			}
		}
		return nil
	}))
}

// Ping checks that the database answers and accepts the credentials.
func (s *Store) Ping(ctx context.Context) error { return s.classify(s.pool.Ping(ctx)) }
