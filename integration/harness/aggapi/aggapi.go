// Package aggapi is an aggregated API server for the end-to-end tests: a
// real k8s.io/apiserver (genericapiserver) that serves one made-up resource,
// pings of stand.isthmus.dev/v1, so that a test can have kube-apiserver's
// aggregator proxy `kubectl get --raw /apis/stand.isthmus.dev/v1/...`
// to it, through the tunnel, and see the answer come back.
//
// It authenticates requests the way aggregated servers do: from the
// X-Remote-* headers of a request that comes with the aggregator's client
// certificate (kube-apiserver's --proxy-client-cert-file), and from nothing
// else. It has no etcd, no admission, no audit and no priority and fairness.
// It is a test fixture, not a product.
package aggapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"

	extensionsopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	"k8s.io/apiserver/pkg/authentication/request/headerrequest"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/apiserver/pkg/server/healthz"
	openapiutil "k8s.io/apiserver/pkg/util/openapi"
	restclient "k8s.io/client-go/rest"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/kube-openapi/pkg/common"
)

// The resource the server serves: cluster-scoped pings, kind Ping, list
// kind PingList.
const (
	Group    = "stand.isthmus.dev"
	Version  = "v1"
	Resource = "pings"
)

// Options describe the server.
type Options struct {
	// Listener is where it serves; it does TLS itself on it. The server
	// takes it over: it is closed when the server stops, or at once if
	// Start fails.
	Listener net.Listener
	// CertFile and KeyFile are its serving certificate and key (PEM).
	CertFile, KeyFile string
	// RequestHeaderCAFile is the CA of the client certificate
	// kube-apiserver's aggregator presents (its --proxy-client-cert-file):
	// requests are authenticated from their X-Remote-User, X-Remote-Group
	// and X-Remote-Extra- headers only when they come with such a
	// certificate; any other request is refused with 401.
	RequestHeaderCAFile string
	// AllowedNames are the common names that certificate may have; empty:
	// any.
	AllowedNames []string
	// Log receives the server's own messages; nil: discard. (k8s.io/apiserver
	// logs through klog, which is the process's.)
	Log *slog.Logger
}

// Server is a running aggregated API server.
type Server struct {
	storage *pingStorage
	done    chan struct{}
	err     error
}

// Start builds the server and starts serving in the background until ctx
// ends; then it shuts the server down (Done). It returns an error at once if
// the server cannot be built: unreadable certificates, a bad configuration.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.Listener == nil {
		return nil, errors.New("aggapi: no listener")
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln := &stoppableListener{Listener: o.Listener, log: log, closed: make(chan struct{})}
	prepared, storage, err := build(o, ln)
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("aggapi: %w", err)
	}
	s := &Server{storage: storage, done: make(chan struct{})}
	log.Info("aggregated API server serving", "addr", o.Listener.Addr().String(), "group", Group+"/"+Version)
	go func() {
		defer close(s.done)
		err := prepared.RunWithContext(ctx)
		// RunWithContext closes the listener when it stops serving, but
		// not when it fails before it serves.
		_ = ln.Close()
		if err != nil {
			s.err = fmt.Errorf("aggapi: %w", err)
		}
		log.Info("aggregated API server stopped", "err", err)
	}()
	return s, nil
}

// Served is the number of GETs and LISTs of pings answered so far.
func (s *Server) Served() int64 { return s.storage.served.Load() }

// Done is closed when the server has stopped: its listener closed and its
// requests drained. The goroutines of its last connections and of its
// certificate controller may take a moment more to end (a leak check
// retries).
func (s *Server) Done() <-chan struct{} { return s.done }

// Err is why the server stopped, or nil if it stopped because ctx ended.
// Call it after Done.
func (s *Server) Err() error { return s.err }

// build configures the generic API server for the pings, on ln.
func build(o Options, ln net.Listener) (interface {
	RunWithContext(context.Context) error
}, *pingStorage, error) {
	scheme, err := newScheme()
	if err != nil {
		return nil, nil, err
	}
	codecs := serializer.NewCodecFactory(scheme)

	// Static certificate contents, read once: the file-watching providers
	// would run a controller per file, which a test fixture has no use for.
	certPEM, err := os.ReadFile(o.CertFile)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(o.KeyFile)
	if err != nil {
		return nil, nil, err
	}
	cert, err := dynamiccertificates.NewStaticCertKeyContent("serving-cert", certPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("serving certificate %s: %w", o.CertFile, err)
	}
	caPEM, err := os.ReadFile(o.RequestHeaderCAFile)
	if err != nil {
		return nil, nil, err
	}
	ca, err := dynamiccertificates.NewStaticCAContent("request-header", caPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("request-header CA %s: %w", o.RequestHeaderCAFile, err)
	}

	c := genericapiserver.NewConfig(codecs)
	c.SecureServing = &genericapiserver.SecureServingInfo{Listener: ln, Cert: cert}
	c.ExternalAddress = o.Listener.Addr().String()
	// Nothing of this server calls itself, but New insists on a loopback
	// configuration.
	c.LoopbackClientConfig = &restclient.Config{}
	c.EffectiveVersion = basecompatibility.NewEffectiveVersionFromString("1.37", "", "")

	// Request-header authentication only: no anonymous user, no token
	// review (which would call a kube-apiserver), no client certificates
	// as users. kube-apiserver has authorized the request already, so
	// every authenticated user may do everything.
	requestHeader := &authenticatorfactory.RequestHeaderConfig{
		UsernameHeaders:     headerrequest.StaticStringSlice{"X-Remote-User"},
		UIDHeaders:          headerrequest.StaticStringSlice{"X-Remote-Uid"},
		GroupHeaders:        headerrequest.StaticStringSlice{"X-Remote-Group"},
		ExtraHeaderPrefixes: headerrequest.StaticStringSlice{"X-Remote-Extra-"},
		CAContentProvider:   ca,
		AllowedClientNames:  headerrequest.StaticStringSlice(o.AllowedNames),
	}
	authn, _, err := authenticatorfactory.DelegatingAuthenticatorConfig{RequestHeaderConfig: requestHeader}.New()
	if err != nil {
		return nil, nil, fmt.Errorf("authenticator: %w", err)
	}
	c.Authentication.Authenticator = authn
	c.Authentication.RequestHeaderConfig = requestHeader // so that the headers are removed once read
	// The TLS server asks for a client certificate (without requiring one)
	// only if it has a client CA.
	if err := c.Authentication.ApplyClientCert(ca, c.SecureServing); err != nil {
		return nil, nil, err
	}
	c.Authorization.Authorizer = authorizerfactory.NewAlwaysAllowAuthorizer()

	// Off: what the pings do not need and what would start goroutines.
	// The "log" health check starts a process-wide klog flusher that never
	// ends; the max-in-flight limit and the object count tracker run
	// maintenance loops; profiling and metrics are not looked at.
	checks := []healthz.HealthChecker{healthz.PingHealthz}
	c.HealthzChecks, c.LivezChecks, c.ReadyzChecks = checks, checks, checks
	c.MaxRequestsInFlight, c.MaxMutatingRequestsInFlight = 0, 0
	c.DisabledPostStartHooks.Insert("max-in-flight-filter")
	c.StorageObjectCountTracker = nil
	c.EnableProfiling, c.EnableMetrics = false, false

	// OpenAPI: kube-apiserver's aggregator downloads /openapi/v2 and
	// /openapi/v3 from every aggregated server, and the generic server
	// needs the models for server-side apply anyway. The meta types come
	// from apiextensions-apiserver's generated definitions.
	defs := openapiutil.GetOpenAPIDefinitionsWithoutDisabledFeatures(func(ref common.ReferenceCallback) map[string]common.OpenAPIDefinition {
		all := extensionsopenapi.GetOpenAPIDefinitions(ref)
		for k, v := range openAPIDefinitions(ref) {
			all[k] = v
		}
		return all
	})
	namer := openapinamer.NewDefinitionNamer(scheme)
	c.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(defs, namer)
	c.OpenAPIConfig.Info.Title = "isthmus stand"
	c.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(defs, namer)
	c.OpenAPIV3Config.Info.Title = "isthmus stand"

	gs, err := c.Complete(nil).New("isthmus-stand", genericapiserver.NewEmptyDelegate())
	if err != nil {
		return nil, nil, err
	}
	storage := newPingStorage()
	group := genericapiserver.NewDefaultAPIGroupInfo(Group, scheme, runtime.NewParameterCodec(scheme), codecs)
	group.VersionedResourcesStorageMap[Version] = map[string]rest.Storage{Resource: storage}
	if err := gs.InstallAPIGroup(&group); err != nil {
		return nil, nil, err
	}
	return gs.PrepareRun(), storage, nil
}

// stoppableListener keeps a failing listener (its network namespace torn
// down, say) from crashing the test process: the generic server panics if
// its HTTP server stops serving before it was told to stop. Accept waits for
// Close instead of returning a lasting error.
type stoppableListener struct {
	net.Listener
	log    *slog.Logger
	once   sync.Once
	closed chan struct{}
}

func (l *stoppableListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		var temp interface{ Temporary() bool }
		if errors.As(err, &temp) && temp.Temporary() {
			return nil, err // http.Server retries these itself
		}
		select {
		case <-l.closed:
		default:
			l.log.Error("aggregated API server's listener failed; serving nothing until stopped", "err", err)
			<-l.closed
		}
	}
	return c, err
}

func (l *stoppableListener) Close() error {
	err := net.ErrClosed
	l.once.Do(func() {
		close(l.closed)
		err = l.Listener.Close()
	})
	return err
}
