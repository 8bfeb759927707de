import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

/**
 * Checks real answers against the gateway's own OpenAPI 3.1 document: the schema a response
 * should have is looked up by path template, method, status and media type, and validated with
 * Ajv's JSON Schema 2020-12 dialect (OpenAPI 3.1's), `$ref`s resolved inside the document.
 */
type OpenApiDocument = { paths: Record<string, Record<string, { responses: Record<string, ResponseObject> }>> };
type ResponseObject = { content?: Record<string, { schema?: unknown }> };

export class ResponseValidator {
  private readonly ajv = new Ajv2020({ strict: false, allErrors: true });
  private readonly compiled = new Map<string, ValidateFunction>();

  constructor(readonly document: OpenApiDocument) {
    (addFormats as unknown as (ajv: Ajv2020) => void)(this.ajv);
    this.ajv.addSchema(document, 'openapi.json');
  }

  /** Throws, naming every mismatch, unless `body` is what the document says `template` answers. */
  check(method: string, template: string, status: number, contentType: string | null, body: unknown): void {
    const operation = this.document.paths[template]?.[method.toLowerCase()];
    if (!operation) throw new Error(`the document has no ${method} ${template}`);
    const response = operation.responses[String(status)];
    if (!response) throw new Error(`the document lists no ${status} for ${method} ${template}`);
    const type = (contentType ?? '').split(';')[0]!.trim();
    if (!response.content?.[type]) {
      throw new Error(
        `${method} ${template} ${status}: the document has no ${type} (has ${Object.keys(response.content ?? {}).join(', ')})`,
      );
    }
    const pointer = ['paths', template, method.toLowerCase(), 'responses', String(status), 'content', type, 'schema']
      .map((part) => part.replaceAll('~', '~0').replaceAll('/', '~1'))
      .join('/');
    const ref = `openapi.json#/${pointer}`;
    let validate = this.compiled.get(ref);
    if (!validate) {
      validate = this.ajv.compile({ $ref: ref });
      this.compiled.set(ref, validate);
    }
    if (!validate(body)) {
      throw new Error(
        `${method} ${template} ${status} does not match the document: ${this.ajv.errorsText(validate.errors)}\n${JSON.stringify(body).slice(0, 800)}`,
      );
    }
  }
}
