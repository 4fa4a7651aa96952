// Upload one file with tus-js-client in Node on its default options (only the endpoint),
// or resume one through its stored URL. Prints one JSON line per event:
//   node tus_upload.mjs ENDPOINT FILE [UPLOAD_URL]
// TUS_PARALLEL_UPLOADS=N sets the one option besides: N partial uploads joined by the
// concatenation extension.
import fs from "node:fs";
import { Upload } from "tus-js-client";

const [endpoint, path, uploadUrl] = process.argv.slice(2);
const say = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const options = {
  endpoint,
  onUploadUrlAvailable: () => say({ url: upload.url }),
  onError: (error) => {
    say({ error: String(error) });
    process.exit(1);
  },
  onSuccess: () => say({ success: true, url: upload.url }),
};
if (process.env.TUS_PARALLEL_UPLOADS) {
  options.parallelUploads = Number(process.env.TUS_PARALLEL_UPLOADS);
}
if (uploadUrl) options.uploadUrl = uploadUrl; // a new client resuming the stored URL
const upload = new Upload(fs.createReadStream(path), options);
upload.start();
