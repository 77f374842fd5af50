// Command gofakes3 is the S3-compatible server of kubetune's object storage tests (tests/trainer/servers.py):
// gofakes3's S3 handler (github.com/johannesboyne/gofakes3) over its memory backend, as its own command runs it,
// plus one thing that command lacks: with -credentials, every request must carry an AWS Signature Version 4
// made with that key pair, or it is refused (403, as S3 refuses it). gofakes3 accepts any credentials; the check
// is rclone's fork's signature package (github.com/rclone/gofakes3/signature, derived from MinIO's), which
// recomputes the signature from the secret. Without -credentials nothing is checked, as before.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/rclone/gofakes3/signature"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		log.Fatal(err)
	}
}

// options are the command line: gofakes3's own flags that the tests use, and -credentials.
type options struct {
	host          string
	backend       string
	initialBucket string
	credentials   string
	quiet         bool
}

func parse(args []string) (options, error) {
	var o options
	flags := flag.NewFlagSet("gofakes3", flag.ContinueOnError)
	flags.StringVar(&o.host, "host", ":9000", "address to listen on")
	flags.StringVar(&o.backend, "backend", "mem", "storage backend: mem (memory), the only one this build has")
	flags.StringVar(&o.initialBucket, "initialbucket", "", "a bucket to create at start")
	flags.StringVar(&o.credentials, "credentials", "",
		"ACCESS_KEY_ID:SECRET_ACCESS_KEY: refuse every request not signed (AWS Signature V4) with this pair; "+
			"unset, any credentials (or none) are accepted")
	flags.BoolVar(&o.quiet, "quiet", false, "do not log gofakes3's messages")
	if err := flags.Parse(args); err != nil {
		return o, err
	}
	if o.backend != "mem" && o.backend != "memory" {
		return o, fmt.Errorf("-backend %q: this build has the memory backend only (-backend mem)", o.backend)
	}
	return o, nil
}

// keyPair splits -credentials; ok is false when it is unset.
func keyPair(value string) (accessKey, secretKey string, ok bool, err error) {
	if value == "" {
		return "", "", false, nil
	}
	accessKey, secretKey, found := strings.Cut(value, ":")
	if !found || accessKey == "" || secretKey == "" {
		return "", "", false, errors.New("-credentials must be ACCESS_KEY_ID:SECRET_ACCESS_KEY, both non-empty")
	}
	return accessKey, secretKey, true, nil
}

// requireSignature refuses, with S3's error document, every request whose Signature V4 was not made with
// accessKey and secretKey (or that has none).
func requireSignature(next http.Handler, accessKey, secretKey string) http.Handler {
	lookup := func(key string) (string, bool) {
		if key != accessKey {
			return "", false
		}
		return secretKey, true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if code := signature.V4SignVerifyWithLookup(r, lookup); code != signature.ErrNone {
			refusal := signature.GetAPIError(code)
			log.Printf("refused %s %s from %s: %s", r.Method, r.URL.Path, r.RemoteAddr, refusal.Code)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(refusal.HTTPStatusCode)
			_, _ = w.Write(signature.EncodeAPIErrorToResponse(refusal))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func run(args []string) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	accessKey, secretKey, checkSignatures, err := keyPair(o.credentials)
	if err != nil {
		return err
	}
	backend := s3mem.New()
	if o.initialBucket != "" {
		if err := backend.CreateBucket(o.initialBucket); err != nil && !gofakes3.IsAlreadyExists(err) {
			return fmt.Errorf("could not create -initialbucket %q: %w", o.initialBucket, err)
		}
		log.Println("created -initialbucket", o.initialBucket)
	}
	logger := gofakes3.GlobalLog()
	if o.quiet {
		logger = gofakes3.DiscardLog()
	}
	handler := gofakes3.New(backend, gofakes3.WithLogger(logger)).Server()
	if checkSignatures {
		handler = requireSignature(handler, accessKey, secretKey)
		log.Printf("requests must be signed (AWS Signature V4) with access key %s", accessKey)
	}
	listener, err := net.Listen("tcp", o.host)
	if err != nil {
		return err
	}
	log.Println("using port:", listener.Addr().(*net.TCPAddr).Port)
	return (&http.Server{Handler: handler}).Serve(listener)
}
