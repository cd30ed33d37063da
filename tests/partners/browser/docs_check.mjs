// Opens stepgate's /docs in headless Chromium, as a person would: waits for Swagger UI to
// render the served document, lists the operations it shows, opens the "Authorize" dialog
// and reads what it offers, and saves a screenshot.
// usage: node docs_check.mjs BASE_URL SCREENSHOT_PATH   -> one JSON object on stdout
import { chromium } from "playwright-core";

const [base, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // The machine's network is closed: no background connections, no sandbox as root.
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 2000 } });
  const failed = [];
  page.on("requestfailed", (r) => failed.push(r.url()));
  await page.goto(`${base}/docs/`, { waitUntil: "networkidle" });
  await page.waitForSelector(".opblock", { timeout: 15000 });
  const operations = await page.$$eval(".opblock", (blocks) =>
    blocks.map((b) => ({
      method: b.querySelector(".opblock-summary-method")?.textContent.trim().toLowerCase(),
      path: b.querySelector(".opblock-summary-path")?.getAttribute("data-path"),
    })));
  await page.click("button.authorize");
  await page.waitForSelector(".modal-ux", { timeout: 5000 });
  const authorize = await page.$eval(".modal-ux", (m) => m.innerText);
  await page.screenshot({ path: screenshot, fullPage: false });
  console.log(JSON.stringify({ operations, authorize, failed }));
} finally {
  await browser.close();
}
