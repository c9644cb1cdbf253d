import koffi, {} from 'koffi';
import { promisify } from 'node:util';
import { SigilError } from '../src/errors.js';
import { TPM_HEADER_SIZE } from '../src/tpm/constants.js';
import { describeRc } from '../src/tpm/rc.js';
// A TpmTransport through tpm2-tss's TCTI loader, for TPM stacks the pure transports do not reach
// (tabrmd, mssim, vendor TCTIs). TSS 2.0 TCTI specification: TSS2_TCTI_CONTEXT_COMMON_V1 is
// { uint64 magic; uint32 version; transmit; receive; finalize; cancel; getPollHandles; setLocality }.
const TIMEOUT_BLOCK = -1;
const MAX_RESPONSE = 64 * 1024;
let native;
function load() {
    if (native !== undefined)
        return native;
    let lib;
    try {
        lib = koffi.load('libtss2-tctildr.so.0');
    }
    catch (err) {
        throw new SigilError('BACKEND_UNAVAILABLE', 'tcti: cannot load libtss2-tctildr.so.0', { cause: err });
    }
    koffi.opaque('TSS2_TCTI_CONTEXT');
    native = {
        initialize: lib.func('uint32_t Tss2_TctiLdr_Initialize(const char *nameConf, _Out_ TSS2_TCTI_CONTEXT **context)'),
        finalize: lib.func('void Tss2_TctiLdr_Finalize(_Inout_ TSS2_TCTI_CONTEXT **context)'),
        common: koffi.struct('TSS2_TCTI_CONTEXT_COMMON_V1', {
            magic: 'uint64_t',
            version: 'uint32_t',
            transmit: 'void *',
            receive: 'void *',
            finalize: 'void *',
            cancel: 'void *',
            getPollHandles: 'void *',
            setLocality: 'void *',
        }),
        transmit: koffi.proto('uint32_t TSS2_TCTI_TRANSMIT_FCN(TSS2_TCTI_CONTEXT *ctx, size_t size, const uint8_t *command)'),
        receive: koffi.proto('uint32_t TSS2_TCTI_RECEIVE_FCN(TSS2_TCTI_CONTEXT *ctx, _Inout_ size_t *size, uint8_t *response, int32_t timeout)'),
    };
    return native;
}
class TctiTransport {
    #ctx;
    #transmit;
    #receive;
    #tail = Promise.resolve();
    #closed = false;
    constructor(ctx, transmit, receive) {
        this.#ctx = ctx;
        this.#transmit = transmit;
        this.#receive = receive;
    }
    #serial(f) {
        const next = this.#tail.then(f, f);
        this.#tail = next.catch(() => undefined);
        return next;
    }
    send(command) {
        if (command.length < TPM_HEADER_SIZE || command.readUInt32BE(2) !== command.length) {
            return Promise.reject(new SigilError('INVALID_ARGUMENT', 'tcti: command size does not match its header'));
        }
        return this.#serial(async () => {
            if (this.#closed)
                throw new SigilError('BACKEND_UNAVAILABLE', 'tcti: transport closed');
            // The calls run on koffi's worker threads so a slow TPM does not stall the event loop;
            // the serial queue keeps them strictly one after another on the context.
            let rc = await this.#transmit(this.#ctx, command.length, command);
            if (rc !== 0)
                throw new SigilError('BACKEND_UNAVAILABLE', `tcti: transmit failed: ${describeRc(rc)}`);
            const buf = Buffer.alloc(MAX_RESPONSE);
            const size = [buf.length];
            rc = await this.#receive(this.#ctx, size, buf, TIMEOUT_BLOCK);
            if (rc !== 0)
                throw new SigilError('BACKEND_UNAVAILABLE', `tcti: receive failed: ${describeRc(rc)}`);
            const n = Number(size[0]);
            if (n < TPM_HEADER_SIZE || n > buf.length)
                throw new SigilError('BACKEND_ERROR', `tcti: response of ${n} bytes`);
            return Buffer.from(buf.subarray(0, n));
        });
    }
    close() {
        this.#closed = true;
        return this.#serial(async () => {
            if (this.#ctx === null)
                return;
            load().finalize([this.#ctx]);
            this.#ctx = null;
        });
    }
}
/**
 * Opens a TPM through `Tss2_TctiLdr_Initialize(conf)`; `conf` is a TCTI loader string such as
 * `swtpm:host=127.0.0.1,port=2321`, `device:/dev/tpmrm0` or `tabrmd`.
 */
export async function openTcti(conf) {
    const n = load();
    const out = [null];
    const rc = n.initialize(conf === '' ? null : conf, out);
    if (rc !== 0 || out[0] === null) {
        throw new SigilError('BACKEND_UNAVAILABLE', `tcti: cannot initialize ${JSON.stringify(conf)}: ${describeRc(rc)}`);
    }
    const ctx = out[0];
    const common = koffi.decode(ctx, n.common);
    const transmitFn = koffi.decode(common.transmit, n.transmit);
    const receiveFn = koffi.decode(common.receive, n.receive);
    return new TctiTransport(ctx, promisify(transmitFn.async), promisify(receiveFn.async));
}
//# sourceMappingURL=tcti.js.map