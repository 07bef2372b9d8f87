/* SHA-256's low-level API (SHA256_CTX, deprecated since OpenSSL 3.0 but kept in
   libcrypto.so.3) is the only one whose chaining state can be read and set: an
   incremental backup resumes a chunk's hash at a recorded frame boundary. Same
   assembly (SHA-NI) as EVP's SHA-256. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/evp.h>
#include <openssl/md5.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <openssl/rand.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
