package server

import (
	"log/slog"
	"net"

	"google.golang.org/grpc/credentials"

	"isthmus.dev/tunnel/limits"
)

// loggedTLS are the gRPC frontend's TLS credentials: a client refused in
// the handshake (no client certificate, one of another CA, an expired
// one) is logged, rate limited, with the reason. gRPC itself drops it
// silently, and its client (kube-apiserver) often sees only "broken pipe".
type loggedTLS struct {
	credentials.TransportCredentials
	log *limits.RateLog
}

func (c loggedTLS) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		client := raw.RemoteAddr().String()
		if host, _, serr := net.SplitHostPort(client); serr == nil {
			client = host
		}
		c.log.Log(slog.LevelInfo, "grpc_tls", "TLS handshake failed on the grpc frontend", "client", client, "err", err)
	}
	return conn, info, err
}

func (c loggedTLS) Clone() credentials.TransportCredentials {
	return loggedTLS{TransportCredentials: c.TransportCredentials.Clone(), log: c.log}
}
