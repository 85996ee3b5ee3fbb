package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/server"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/telemetry"
	"github.com/quantmesh/quantmesh/services/experiment"
	"github.com/quantmesh/quantmesh/services/inference"
	"github.com/quantmesh/quantmesh/services/risk"
)

// errHelp reports that -h was asked for and the usage printed.
var errHelp = flag.ErrHelp

// envPrefix prefixes the variable of every flag: --database-url is
// QUANTMESH_DATABASE_URL.
const envPrefix = "QUANTMESH_"

// envAPIKeys holds API keys inline ("key:role[:name],..."). It has no flag,
// so keys never appear in a process listing.
const envAPIKeys = "QUANTMESH_API_KEYS"

// envName returns the variable that sets flag name.
func envName(name string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// parseFlags parses args into fs, then sets every flag not given on the
// command line from its QUANTMESH_* variable. Errors are one-line usage
// errors naming the flag or variable; -h prints the flags to helpOut.
func parseFlags(fs *flag.FlagSet, args []string, helpOut io.Writer) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(helpOut, "Usage of %s:\n", fs.Name())
			fs.SetOutput(helpOut)
			fs.PrintDefaults()
			return errHelp
		}
		return usagef("%v (see '%s -h')", err, fs.Name())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || set[f.Name] {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = usagef("invalid %s=%q: %v", envName(f.Name), v, serr)
			}
		}
	})
	return err
}

// meshFlags are the settings of a mesh process (up, serve, migrate).
type meshFlags struct {
	grpcAddr        string
	httpAddr        string
	dataDir         string
	databaseURL     string
	timescale       string
	kafkaBrokers    string
	apiKeysFile     string
	peerAPIKey      string
	insecure        bool
	shutdownTimeout time.Duration
	maxRecvBytes    int
	logLevel        string
	logFormat       string
	otlpEndpoint    string
	artifactRoot    string
	inferenceModels string
	bootstrapModel  bool
	riskTTL         time.Duration
	riskTimezone    string
	riskRetention   time.Duration
	riskEventsKept  time.Duration
	learn           bool
	learner         learnFlags

	// serve only.
	services string
	peers    map[string]*string
}

func (f *meshFlags) register(fs *flag.FlagSet, serve bool) {
	d := server.DefaultConfig()
	fs.StringVar(&f.grpcAddr, "grpc-addr", d.GRPCAddr, "gRPC listen address (host:port; port 0 picks one)")
	fs.StringVar(&f.httpAddr, "http-addr", d.HTTPAddr, "REST gateway, /metrics, /healthz and /readyz listen address")
	fs.StringVar(&f.dataDir, "data-dir", "./data", "directory of the embedded SQLite database and artifacts")
	fs.StringVar(&f.databaseURL, "database-url", "", "postgres://... selects PostgreSQL; empty means SQLite at <data-dir>/quantmesh.db")
	fs.StringVar(&f.timescale, "timescale", store.TimescaleAuto, "TimescaleDB use on PostgreSQL: auto, on or off")
	fs.StringVar(&f.kafkaBrokers, "kafka-brokers", "", "comma-separated Kafka brokers; empty means the in-process bus")
	fs.StringVar(&f.apiKeysFile, "api-keys-file", "", "file of API keys, one key:role[:name] per line (also "+envAPIKeys+"); none means authentication is off")
	fs.StringVar(&f.peerAPIKey, "peer-api-key", "", "API key sent on calls to other quantmesh services")
	fs.BoolVar(&f.insecure, "insecure", false, "allow a non-loopback listen address with authentication off")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", d.ShutdownTimeout, "how long in-flight calls may drain on shutdown")
	fs.IntVar(&f.maxRecvBytes, "max-recv-bytes", d.MaxRecvBytes, "largest request message accepted, in bytes")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&f.otlpEndpoint, "otlp-endpoint", "", "OTLP/gRPC trace endpoint (also OTEL_EXPORTER_OTLP_ENDPOINT); empty exports no traces")
	fs.StringVar(&f.artifactRoot, "artifact-root", "", "prefix of default artifact locations; empty means file://<data-dir>/artifacts")
	fs.StringVar(&f.inferenceModels, "inference-models", "policy=production", "models InferenceService serves, as name=alias pairs, comma-separated; each follows its alias in the registry")
	fs.BoolVar(&f.bootstrapModel, "bootstrap-model", true, "on start, if a served model's alias is unset, train one on the bundled data and promote it (needs InferenceService here and ExperimentService reachable)")
	rd := risk.DefaultConfig()
	fs.DurationVar(&f.riskTTL, "risk-reservation-ttl", rd.ReservationTTL, "how long an approved order's reservation lives unless the account's limits say otherwise")
	fs.StringVar(&f.riskTimezone, "risk-timezone", "UTC", "IANA time zone whose midnight starts the trading day (daily loss, drawdown)")
	fs.DurationVar(&f.riskRetention, "risk-retention", rd.Retention, "how long closed and expired reservations and their fills are kept (at least 168h, the longest duplicate window)")
	fs.DurationVar(&f.riskEventsKept, "risk-event-retention", rd.EventRetention, "how long risk events are kept for resuming WatchRiskEvents streams (at least 24h)")
	fs.BoolVar(&f.learn, "learn", false, "run the online learner here (EWC fine-tuning on decisions joined with bars from the bus; see 'quantmesh learn -h' and the --learn-* flags)")
	f.learner.register(fs, "learn-")
	if serve {
		fs.StringVar(&f.services, "services", "", "comma-separated services and workers to run here: "+strings.Join(mesh.Runnable(), ", ")+" (or all)")
		f.peers = map[string]*string{}
		for _, name := range mesh.AllServices {
			f.peers[name] = fs.String("peer-"+name, "", "gRPC address of "+name+" when it runs elsewhere")
		}
	}
}

// config validates the flags and builds the mesh configuration.
func (f *meshFlags) config(services []string) (mesh.Config, telemetry.LogConfig, error) {
	logCfg := telemetry.LogConfig{Level: f.logLevel, Format: f.logFormat}
	if _, err := telemetry.NewLogger(io.Discard, logCfg); err != nil {
		return mesh.Config{}, logCfg, usagef("invalid --log-level or --log-format: %v", err)
	}
	for _, a := range []struct{ flag, addr string }{{"grpc-addr", f.grpcAddr}, {"http-addr", f.httpAddr}} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return mesh.Config{}, logCfg, usagef("invalid --%s %q: want host:port", a.flag, a.addr)
		}
	}
	if f.shutdownTimeout <= 0 {
		return mesh.Config{}, logCfg, usagef("invalid --shutdown-timeout %s: must be positive", f.shutdownTimeout)
	}
	if f.maxRecvBytes < 1024 {
		return mesh.Config{}, logCfg, usagef("invalid --max-recv-bytes %d: must be at least 1024", f.maxRecvBytes)
	}
	if f.dataDir == "" {
		return mesh.Config{}, logCfg, usagef("invalid --data-dir: must not be empty")
	}
	switch f.timescale {
	case store.TimescaleAuto, store.TimescaleOn, store.TimescaleOff:
	default:
		return mesh.Config{}, logCfg, usagef("invalid --timescale %q: want auto, on or off", f.timescale)
	}
	dbURL := f.databaseURL
	if dbURL == "" {
		dbURL = filepath.Join(f.dataDir, "quantmesh.db")
	} else if strings.Contains(dbURL, "://") && !store.IsPostgresURL(dbURL) {
		return mesh.Config{}, logCfg, usagef("invalid --database-url: want postgres://... (or empty for SQLite)")
	}
	keys, err := auth.LoadKeys(f.apiKeysFile, os.Getenv(envAPIKeys))
	if err != nil {
		return mesh.Config{}, logCfg, usagef("invalid --api-keys-file or %s: %v", envAPIKeys, err)
	}
	if !keys.Enabled() && !f.insecure {
		for _, a := range []struct{ flag, addr string }{{"grpc-addr", f.grpcAddr}, {"http-addr", f.httpAddr}} {
			if !isLoopback(a.addr) {
				return mesh.Config{}, logCfg, usagef("refusing --%s %s: a non-loopback address needs API keys (--api-keys-file or %s), or --insecure to run without authentication", a.flag, a.addr, envAPIKeys)
			}
		}
	}
	var brokers []string
	for _, b := range strings.Split(f.kafkaBrokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			if _, _, err := net.SplitHostPort(b); err != nil {
				return mesh.Config{}, logCfg, usagef("invalid --kafka-brokers entry %q: want host:port", b)
			}
			brokers = append(brokers, b)
		}
	}
	exp := experiment.DefaultConfig()
	exp.ArtifactRoot = f.artifactRoot
	if exp.ArtifactRoot == "" {
		abs, err := filepath.Abs(filepath.Join(f.dataDir, "artifacts"))
		if err != nil {
			return mesh.Config{}, logCfg, usagef("invalid --data-dir: %v", err)
		}
		exp.ArtifactRoot = "file://" + abs
	}
	riskCfg, err := f.riskConfig()
	if err != nil {
		return mesh.Config{}, logCfg, err
	}
	inf := inference.Config{}
	for _, pair := range strings.Split(f.inferenceModels, ",") {
		if pair = strings.TrimSpace(pair); pair == "" {
			continue
		}
		name, alias, ok := strings.Cut(pair, "=")
		if !ok || name == "" || alias == "" {
			return mesh.Config{}, logCfg, usagef("invalid --inference-models entry %q: want name=alias", pair)
		}
		inf.Models = append(inf.Models, inference.ModelSpec{Name: name, Alias: alias})
	}
	if err := inf.Validate(); err != nil {
		return mesh.Config{}, logCfg, usagef("invalid --inference-models: %v", err)
	}
	peers := map[string]string{}
	for name, addr := range f.peers {
		if *addr != "" {
			peers[name] = *addr
		}
	}
	cfg := mesh.Config{
		Server: server.Config{
			GRPCAddr:        f.grpcAddr,
			HTTPAddr:        f.httpAddr,
			MaxRecvBytes:    f.maxRecvBytes,
			ShutdownTimeout: f.shutdownTimeout,
		},
		Store:          store.Config{URL: dbURL, Timescale: f.timescale},
		KafkaBrokers:   brokers,
		Services:       services,
		Peers:          peers,
		Keys:           keys,
		PeerAPIKey:     f.peerAPIKey,
		Experiment:     exp,
		Risk:           riskCfg,
		Inference:      inf,
		BootstrapModel: f.bootstrapModel,
		DataDir:        f.dataDir,
	}
	if f.learn {
		lc, err := f.learner.config("learn-")
		if err != nil {
			return mesh.Config{}, logCfg, err
		}
		cfg.Learner = &lc
	}
	if err := cfg.Validate(); err != nil {
		return mesh.Config{}, logCfg, usagef("invalid --%v", err)
	}
	return cfg, logCfg, nil
}

// riskConfig builds the risk service's configuration; an invalid value is
// a usage error naming its flag.
func (f *meshFlags) riskConfig() (risk.Config, error) {
	tz := f.riskTimezone
	if tz == "" {
		tz = "UTC"
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return risk.Config{}, usagef("invalid --risk-timezone %q: %v", tz, err)
	}
	cfg := risk.DefaultConfig()
	cfg.Location = loc
	// Each value is checked on the defaults, so that an error names its flag.
	for _, v := range []struct {
		flag string
		set  func(*risk.Config)
	}{
		{"risk-reservation-ttl", func(c *risk.Config) { c.ReservationTTL = f.riskTTL }},
		{"risk-retention", func(c *risk.Config) { c.Retention = f.riskRetention }},
		{"risk-event-retention", func(c *risk.Config) { c.EventRetention = f.riskEventsKept }},
	} {
		one := risk.DefaultConfig()
		v.set(&one)
		if err := one.Validate(); err != nil {
			return risk.Config{}, usagef("invalid --%s: %v", v.flag, err)
		}
		v.set(&cfg)
	}
	return cfg, nil
}

// isLoopback reports whether a listen address accepts loopback
// connections only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// splitServices parses --services.
func splitServices(s string) ([]string, error) {
	if strings.TrimSpace(s) == "all" {
		return mesh.Runnable(), nil
	}
	var out []string
	for _, name := range strings.Split(s, ",") {
		if name = strings.TrimSpace(name); name != "" {
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		return nil, usagef("--services is required: a comma-separated list of %s, or all", strings.Join(mesh.Runnable(), ", "))
	}
	return out, nil
}

// dialMesh opens a plaintext client connection to a mesh's gRPC address,
// sending apiKey (when set) with every call. An unusable target is a usage
// error naming --target.
func dialMesh(target, apiKey string) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if apiKey != "" {
		opts = append(opts, auth.PerRPCKey(apiKey))
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, usagef("invalid --target %q: %v", target, err)
	}
	return conn, nil
}
