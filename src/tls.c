/*
 * tls.c — OpenSSL 3 contexts for both roles, the identity rule of
 * certificates (one for both sides), and why a handshake failed.
 *
 * Every connection's SSL carries a struct tls_check (ex_data): the name
 * the peer's certificate must carry, if any, and the first reason the
 * verification of the peer's chain gave, with the certificate it was
 * about, so that a failure can say expired, not yet valid, unknown CA or
 * name mismatch, and name the identities involved.
 */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tls.h"
#include "util.h"
#include "xmalloc.h"

struct tls_check {
	char	 expect[HOST_MAX_LEN + 1];	/* "" on the server side */
	long	 err;			/* X509_V_OK: nothing failed */
	int	 depth;			/* of the certificate it is about */
	char	 names[300];		/* the peer's identities */
	char	 subject[256];		/* the failing certificate's CN */
	char	 issuer[256];		/* its issuer's CN */
	char	 when[64];		/* notBefore / notAfter as it fails */
};

static int check_idx = -1;
static pthread_once_t check_once = PTHREAD_ONCE_INIT;

static void
check_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
    void *argp)
{
	free(ptr);
}

static void
check_index(void)
{
	check_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, check_free);
}

static struct tls_check *
check_of(const SSL *ssl)
{
	if (ssl == NULL || check_idx < 0)
		return NULL;
	return SSL_get_ex_data(ssl, check_idx);
}

const char *
tls_last_error(void)
{
	static __thread char buf[256];
	unsigned long e = ERR_get_error();
	if (e == 0)
		return "unknown TLS error";
	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	return buf;
}

void
tls_error_string(unsigned long e, char *buf, size_t bufsz)
{
	/* OpenSSL 3 packs errno values of failed system calls. */
	if (ERR_SYSTEM_ERROR(e))
		snprintf(buf, bufsz, "%s", strerror(ERR_GET_REASON(e)));
	else
		ERR_error_string_n(e, buf, bufsz);
}

static int verify_cb(int ok, X509_STORE_CTX *x);

SSL_CTX *
tls_ctx_new(int server, const char *cert, const char *key, const char *ca,
    char *err, size_t errsz)
{
	SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() :
	    TLS_client_method());
	if (ctx == NULL) {
		snprintf(err, errsz, "cannot create TLS context: %s",
		    tls_last_error());
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
	/* A peer that closes without close_notify is an ordinary error for
	 * us, handled by the protocol (no ACK means no commit). */
	SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF |
	    SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		snprintf(err, errsz, "tls_cert %s: %s", cert, tls_last_error());
		goto fail;
	}
	/* As OpenSSH does: a key others may read is no longer private. */
	struct stat sb;
	if (stat(key, &sb) == 0 && (sb.st_mode & 077) != 0) {
		snprintf(err, errsz, "tls_key %s is accessible by others (mode "
		    "%04o): allow its owner only (chmod 600)", key,
		    (unsigned)(sb.st_mode & 07777));
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		snprintf(err, errsz, "tls_key %s: %s", key, tls_last_error());
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		snprintf(err, errsz, "tls_key %s does not match tls_cert %s",
		    key, cert);
		goto fail;
	}
	if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
		snprintf(err, errsz, "tls_ca %s: %s", ca, tls_last_error());
		goto fail;
	}
	pthread_once(&check_once, check_index);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER |
	    SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_cb);
	if (server) {
		static const unsigned char sid[] = "replicad";
		SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
		/* No resumption: a resumed session would skip the verify
		 * callback and keep the identity of a certificate that may
		 * have expired or been replaced since. */
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
		SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
		SSL_CTX_set_num_tickets(ctx, 0);
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

static int
host_name_ok(const char *s, size_t n)
{
	if (n == 0 || n > 255)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && strchr(".-_", s[i]) == NULL)
			return 0;
	return 1;
}

static int
add_name(char *names[TLS_MAX_NAMES], int n, const char *s, size_t len)
{
	if (n >= TLS_MAX_NAMES || !host_name_ok(s, len))
		return n;
	names[n] = xmalloc(len + 1);
	memcpy(names[n], s, len);
	names[n][len] = '\0';
	return n + 1;
}

/*
 * The identity rule, one for both sides (RFC 6125 6.4.4): a certificate's
 * identities are its DNS subjectAltNames; its common name counts only in
 * a certificate without any, so that a CA that copies the CN of a request
 * as it is cannot let a host claim another's identity through it.  Names
 * are compared whole (no wildcards), without regard to case.  *cn_ignored
 * is set when a CN was there but did not count.
 */
static int
cert_names(X509 *x, char *names[TLS_MAX_NAMES], int *cn_ignored)
{
	int n = 0, dns = 0;

	*cn_ignored = 0;
	GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL,
	    NULL);
	for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
		if (g->type != GEN_DNS)
			continue;
		dns++;
		const unsigned char *p = ASN1_STRING_get0_data(g->d.dNSName);
		int len = ASN1_STRING_length(g->d.dNSName);
		if (len > 0 && memchr(p, '\0', (size_t)len) == NULL)
			n = add_name(names, n, (const char *)p, (size_t)len);
	}
	GENERAL_NAMES_free(sans);

	X509_NAME *subj = X509_get_subject_name(x);
	int idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
	if (idx < 0)
		return n;
	if (dns > 0) {
		*cn_ignored = 1;
		return n;
	}
	ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj,
	    idx));
	unsigned char *utf8 = NULL;
	int len = ASN1_STRING_to_UTF8(&utf8, cn);
	if (len > 0 && memchr(utf8, '\0', (size_t)len) == NULL)
		n = add_name(names, n, (const char *)utf8, (size_t)len);
	OPENSSL_free(utf8);
	return n;
}

int
tls_cert_names(X509 *x, char *names[TLS_MAX_NAMES])
{
	int cn_ignored;
	return cert_names(x, names, &cn_ignored);
}

int
tls_cert_has_name(X509 *x, const char *name)
{
	char *names[TLS_MAX_NAMES];
	int n = tls_cert_names(x, names), found = 0;

	for (int i = 0; i < n; i++)
		if (strcasecmp(names[i], name) == 0)
			found = 1;
	tls_names_free(names, n);
	return found;
}

void
tls_cert_describe(X509 *x, char *buf, size_t bufsz)
{
	char *names[TLS_MAX_NAMES], cn[128] = "";
	int cn_ignored, n;
	size_t len = 0;

	if (x == NULL) {
		snprintf(buf, bufsz, "no certificate");
		return;
	}
	n = cert_names(x, names, &cn_ignored);
	X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn,
	    sizeof(cn));
	buf[0] = '\0';
	for (int i = 0; i < n && len < bufsz; i++) {
		len += (size_t)snprintf(buf + len, bufsz - len, "%s%s",
		    i ? ", " : "", names[i]);
		if (strcasecmp(names[i], cn) == 0)
			cn_ignored = 0;		/* it is a DNS name too */
	}
	tls_names_free(names, n);
	if (n == 0)
		len = (size_t)snprintf(buf, bufsz, "no usable name");
	if (cn_ignored && len < bufsz)
		snprintf(buf + len, bufsz - len, "; its CN %s does not count, "
		    "as it has DNS names", cn);
}

int
tls_peer_names(SSL *ssl, char *names[TLS_MAX_NAMES])
{
	X509 *x = SSL_get0_peer_certificate(ssl);
	if (x == NULL || SSL_get_verify_result(ssl) != X509_V_OK)
		return 0;
	return tls_cert_names(x, names);
}

void
tls_names_free(char *names[TLS_MAX_NAMES], int n)
{
	for (int i = 0; i < n; i++)
		free(names[i]);
}

static void
asn1_time_str(const ASN1_TIME *t, char *buf, size_t bufsz)
{
	BIO *b = BIO_new(BIO_s_mem());
	int n;

	buf[0] = '\0';
	if (b == NULL)
		return;
	if (ASN1_TIME_print(b, t) == 1 && (n = BIO_read(b, buf,
	    (int)bufsz - 1)) > 0)
		buf[n] = '\0';
	BIO_free(b);
}

/*
 * Chain verification, both sides: keep the first failure and the
 * certificate it is about; on the leaf, check the expected name with the
 * identity rule above (not OpenSSL's, which honours wildcards).
 */
static int
verify_cb(int ok, X509_STORE_CTX *x)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(x,
	    SSL_get_ex_data_X509_STORE_CTX_idx());
	struct tls_check *c = check_of(ssl);
	X509 *cert = X509_STORE_CTX_get_current_cert(x);
	int depth = X509_STORE_CTX_get_error_depth(x);

	if (c == NULL)
		return ok;
	if (ok && depth == 0 && c->expect[0] != '\0' && cert != NULL &&
	    !tls_cert_has_name(cert, c->expect)) {
		X509_STORE_CTX_set_error(x, X509_V_ERR_HOSTNAME_MISMATCH);
		ok = 0;
	}
	if (ok || c->err != X509_V_OK)
		return ok;
	c->err = X509_STORE_CTX_get_error(x);
	c->depth = depth;
	if (cert == NULL)
		return ok;
	tls_cert_describe(X509_STORE_CTX_get0_cert(x), c->names,
	    sizeof(c->names));
	X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName,
	    c->subject, sizeof(c->subject));
	X509_NAME_get_text_by_NID(X509_get_issuer_name(cert), NID_commonName,
	    c->issuer, sizeof(c->issuer));
	if (c->err == X509_V_ERR_CERT_HAS_EXPIRED)
		asn1_time_str(X509_get0_notAfter(cert), c->when,
		    sizeof(c->when));
	else if (c->err == X509_V_ERR_CERT_NOT_YET_VALID)
		asn1_time_str(X509_get0_notBefore(cert), c->when,
		    sizeof(c->when));
	return ok;
}

SSL *
tls_ssl_new(SSL_CTX *ctx, const char *expect)
{
	SSL *ssl = SSL_new(ctx);
	struct tls_check *c;

	if (ssl == NULL)
		return NULL;
	c = xcalloc(1, sizeof(*c));
	c->err = X509_V_OK;
	if (SSL_set_ex_data(ssl, check_idx, c) != 1) {
		free(c);
		SSL_free(ssl);
		return NULL;
	}
	if (expect == NULL)
		return ssl;
	/* An address is OpenSSL's to check (IP SANs); a name is ours. */
	X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
	if (X509_VERIFY_PARAM_set1_ip_asc(vp, expect) != 1) {
		snprintf(c->expect, sizeof(c->expect), "%s", expect);
		SSL_set_tlsext_host_name(ssl, expect);
	}
	return ssl;
}

static void
verify_why(const struct tls_check *c, char *buf, size_t bufsz)
{
	char which[600];

	if (c->depth == 0)
		snprintf(which, sizeof(which), "certificate (%s)", c->names);
	else
		snprintf(which, sizeof(which), "CA certificate \"%s\" (of %s)",
		    c->subject, c->names);
	switch (c->err) {
	case X509_V_ERR_HOSTNAME_MISMATCH:
		snprintf(buf, bufsz, "the peer's certificate does not name %s "
		    "(it names %s)", c->expect, c->names);
		break;
	case X509_V_ERR_IP_ADDRESS_MISMATCH:
		snprintf(buf, bufsz, "the peer's certificate does not name the "
		    "address it was expected to (it names %s)", c->names);
		break;
	case X509_V_ERR_CERT_HAS_EXPIRED:
		snprintf(buf, bufsz, "the peer's %s expired on %s", which,
		    c->when);
		break;
	case X509_V_ERR_CERT_NOT_YET_VALID:
		snprintf(buf, bufsz, "the peer's %s is not valid before %s (is "
		    "a clock wrong?)", which, c->when);
		break;
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
	case X509_V_ERR_CERT_SIGNATURE_FAILURE:
		snprintf(buf, bufsz, "the peer's certificate (%s) is issued by "
		    "an unknown CA (\"%s\", not the one in tls_ca)", c->names,
		    c->issuer[0] ? c->issuer : "unnamed");
		break;
	default:
		snprintf(buf, bufsz, "the peer's %s was rejected: %s", which,
		    X509_verify_cert_error_string(c->err));
	}
}

int
tls_why(SSL *ssl, unsigned long e, char *buf, size_t bufsz)
{
	const struct tls_check *c = check_of(ssl);

	if (c != NULL && c->err != X509_V_OK) {
		verify_why(c, buf, bufsz);
		return 1;
	}
	if (e == 0 || ERR_GET_LIB(e) == 0)
		return 0;
	int reason = ERR_GET_REASON(e);
	if (ERR_GET_LIB(e) == ERR_LIB_SSL && reason >= SSL_AD_REASON_OFFSET &&
	    reason < SSL_AD_REASON_OFFSET + 256) {
		/* An alert: the peer refused us, most often our certificate. */
		char own[300];
		tls_cert_describe(ssl ? SSL_get_certificate(ssl) : NULL, own,
		    sizeof(own));
		snprintf(buf, bufsz, "the peer refused the handshake (%s); "
		    "this host's certificate names %s",
		    SSL_alert_desc_string_long(reason - SSL_AD_REASON_OFFSET),
		    own);
		return 1;
	}
	tls_error_string(e, buf, bufsz);
	return 1;
}
